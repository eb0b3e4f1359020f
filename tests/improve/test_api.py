import re

import pytest

from moorelab.errors import MoorelabError
from moorelab.improve.api import REGISTRY, SPEC_NAMES, apply, parse_spec, precheck_chain
from moorelab.improve.prune import MagnitudePruneConfig
from moorelab.improve.quantize import Int4WeightOnlyConfig
from moorelab.model.config import TransformerConfig
from moorelab.model.transformer import Transformer


def test_spec_parsing_types_fields():
    c = parse_spec("int4:group_size=64")
    assert c == Int4WeightOnlyConfig(group_size=64)
    c = parse_spec("magnitude:sparsity=0.5,scope=layer")
    assert c == MagnitudePruneConfig(sparsity=0.5, scope="layer")
    assert parse_spec("heads:fraction=0.33,layers=[0,2]").layers == [0, 2]
    assert isinstance(parse_spec("magnitude:sparsity=0").sparsity, float)
    # heads named per layer: the shell-safe string form and a dict literal (commas inside braces)
    assert parse_spec("heads:remove=0:1+3/2:0").remove == {0: [1, 3], 2: [0]}
    assert parse_spec("heads:remove={0:[1,3],2:[0]},unit=query").remove == {0: [1, 3], 2: [0]}
    assert parse_spec("heads:remove={0:[1,3],2:[0]},unit=query").unit == "query"


@pytest.mark.parametrize("spec,needle", [
    ("int5", "unknown technique 'int5'"),
    ("magnitude:sparsity=1.0", "sparsity=1.0 must be in [0, 1)"),
    ("magnitude:sparsity=-0.1", "must be in [0, 1)"),
    ("int4:group=32", "has no field 'group'"),
    ("int4:group_size=48", "group_size=48"),
    ("wanda:0.5", "expected FIELD=VALUE"),
    ("int4:group_size=32,group_size=64", "field 'group_size' given twice"),
    ("magnitude", "--with 'magnitude': MagnitudePruneConfig needs the field 'sparsity' (write magnitude:sparsity=VALUE)"),
    ("ffn:importance=weight", "FFNChannelPruneConfig needs the field 'fraction'"),
    ("heads", "--with 'heads': HeadPruneConfig: give exactly one of the fields heads_per_layer, fraction or remove"),
    ("heads:remove=0-1", "--with 'heads:remove=0-1': HeadPruneConfig field remove='0-1': expected LAYER:HEAD"),
])
def test_bad_specs_name_the_field(spec, needle):
    with pytest.raises(MoorelabError) as e:
        parse_spec(spec)
    assert needle in str(e.value)


def test_every_spec_name_has_a_transform():
    assert set(SPEC_NAMES.values()) <= set(REGISTRY)


def test_apply_rejects_unregistered_config():
    with pytest.raises(MoorelabError, match="no transform registered for dict"):
        apply(object(), {})


def tiny():
    return Transformer(TransformerConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                         head_dim=8, d_ff=32, max_position_embeddings=32))


@pytest.mark.parametrize("specs,needle", [
    (["int8", "int8"], "cannot quantize an already quantized model"),
    (["int4", "magnitude:sparsity=0.5"], "cannot change a quantized model"),
    (["heads:heads_per_layer=4"], "would prune all 4 heads of layer 0"),
    (["heads:fraction=0.9,layers=[1]"], "would prune all 4 heads of layer 1"),
    (["heads:heads_per_layer=1"], "prune a multiple of 2"),
    (["distill:steps=10"], "distillation recovers a pruned student"),
    (["magnitude:sparsity=0.5", "ffn:fraction=0.25"], "structured pruning needs dense weights"),
    (["ffn:fraction=0.0"], "removes nothing"),
    (["int4:group_size=64"], "does not divide the input width(s) [32]"),
    (["heads:remove=0:1"], "--with 'heads:remove=0:1': HeadPruneConfig field remove: layer 0: with unit='kv_group'"),
    (["heads:remove=0:9"], "layer 0 has no head 9"),
])
def test_chain_errors(specs, needle):
    with pytest.raises(MoorelabError, match=re.escape(needle)):
        precheck_chain(specs, [parse_spec(s) for s in specs], tiny())


def test_valid_chain_passes():
    specs = ["heads:heads_per_layer=2", "ffn:fraction=0.25", "distill:steps=10", "int4"]
    precheck_chain(specs, [parse_spec(s) for s in specs], tiny())


@pytest.mark.parametrize("spec,what", [
    ("int8", "cannot quantize an already quantized model"),
    ("heads:heads_per_layer=2", "cannot change a quantized model"),
])
def test_a_quantized_model_takes_no_further_technique(spec, what):
    """A saved quantized variant loaded for a second round: refused before anything runs."""
    m = tiny()
    apply(m, parse_spec("int4:group_size=32"))
    with pytest.raises(MoorelabError) as e:
        precheck_chain([spec], [parse_spec(spec)], m)
    assert str(e.value) == f"--with {spec!r}: the model is already quantized (int4-weight-only); {what}; start from the float model"


def test_needs_calibration_follows_the_config():
    from moorelab.improve.api import needs_calibration

    assert [needs_calibration(parse_spec(s)) for s in (
        "heads:remove=0:1", "heads:heads_per_layer=2", "heads:heads_per_layer=2,importance=weight",
        "ffn:fraction=0.25", "ffn:fraction=0.25,importance=weight", "wanda", "int8", "magnitude:sparsity=0.5",
    )] == [False, True, False, True, False, True, False, False]
