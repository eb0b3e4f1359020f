import pytest

from moorelab.errors import MoorelabError
from moorelab.improve.api import REGISTRY, SPEC_NAMES, apply, parse_spec
from moorelab.improve.prune import MagnitudePruneConfig
from moorelab.improve.quantize import Int4WeightOnlyConfig


def test_spec_parsing_types_fields():
    c = parse_spec("int4:group_size=64")
    assert c == Int4WeightOnlyConfig(group_size=64)
    c = parse_spec("magnitude:sparsity=0.5,scope=layer")
    assert c == MagnitudePruneConfig(sparsity=0.5, scope="layer")
    assert parse_spec("heads:fraction=0.33,layers=[0,2]").layers == [0, 2]
    assert isinstance(parse_spec("magnitude:sparsity=0").sparsity, float)


@pytest.mark.parametrize("spec,needle", [
    ("int5", "unknown technique 'int5'"),
    ("magnitude:sparsity=1.0", "sparsity=1.0 must be in [0, 1)"),
    ("magnitude:sparsity=-0.1", "must be in [0, 1)"),
    ("int4:group=32", "has no field 'group'"),
    ("int4:group_size=48", "group_size=48"),
    ("wanda:0.5", "expected FIELD=VALUE"),
    ("int4:group_size=32,group_size=64", "field 'group_size' given twice"),
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
