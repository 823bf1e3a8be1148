import itertools

from data.contract import spec_violations
from data.corpus import HAND_WRITTEN, pool_tasks, reference_cases, ruler_cases
from data.leak import LeakGuard, near_duplicate


def test_pool_counts_and_domains():
    tasks = pool_tasks()
    assert len(tasks) >= 300
    assert len({t.domain for t in tasks}) >= 15
    assert len({t.id for t in tasks}) == len(tasks)
    assert not [(a.id, b.id) for a, b in itertools.combinations(tasks, 2)
                if near_duplicate(a.input, b.input)]


def test_references_are_hand_written_valid_and_belong_to_the_pool():
    refs = reference_cases()
    assert len(refs) >= 150
    pool = {t.id: t.input for t in pool_tasks()}
    for c in refs:
        assert c.source == HAND_WRITTEN, c.id
        assert pool.get(c.id) == c.input, c.id
        assert spec_violations(c.gold) == [], c.id


def test_ruler_has_30_valid_cases_disjoint_from_the_pool():
    ruler = ruler_cases()
    assert len(ruler) == 30
    assert all(c.source == HAND_WRITTEN and not spec_violations(c.gold) for c in ruler)
    guard = LeakGuard((c.id, c.input) for c in ruler)
    assert guard.find_leaks((t.id, t.input) for t in pool_tasks()) == []
