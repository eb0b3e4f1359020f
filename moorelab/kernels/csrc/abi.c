/* The two numbers moorelab/kernels/binding.py checks when it loads the library: the ABI version
   (signatures) and the sizes of the fused-decode structures. */

#include "common.h"
#include "fused_decode.h"

int ml_abi_version(void) { return ML_ABI_VERSION; }

int ml_fused_abi(void) { return (int)(sizeof(ml_lin) * 1000 + sizeof(ml_layer)); }
