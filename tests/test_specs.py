"""Every component spec carries parity cases that feed exactly its declared inputs, so the
checks, the parity tests and every target can run a component without knowing its name."""

from __future__ import annotations

import pytest
from qiedge.core.artifacts import ModelFacts
from qiedge.export.cases import PREFIX, CaseContext
from qiedge.export.specs import SPECS


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    from qiedge.reference_model import presets
    from qiedge.reference_model.model_dir import ModelDir, init_model_dir

    model = ModelDir.open(init_model_dir(presets.TINY, tmp_path_factory.mktemp("specs") / "tiny"))
    return CaseContext(ModelFacts.from_model_dir(model), model.transformer.context_in_dim, model.vae.in_channels)


@pytest.mark.parametrize("name", list(SPECS))
def test_cases_feed_exactly_the_declared_inputs(name, context):
    spec = SPECS[name]
    cases = list(spec.cases(context))
    assert len(cases) >= 3, "parity needs several sizes per component"
    for case, feeds in cases:
        fed = set(feeds) - {PREFIX}
        if spec.cache_from is not None:
            producer = SPECS[spec.cache_from]
            assert set(feeds[PREFIX]) == {t.name for t in producer.inputs}, case
            fed |= {t.name for t in producer.outputs}
        assert fed == {t.name for t in spec.inputs}, case


def test_every_contract_has_a_spec():
    from qiedge.core.contract import CONTRACTS

    assert set(CONTRACTS) == set(SPECS)
