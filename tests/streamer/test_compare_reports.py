"""Paired comparison of two bundles' evaluation reports."""

import json

import pytest

from skygrade.streamer.compare_reports import compare, main, mcnemar_p


def _report(path, grades, labels, also=None):
    rows = [
        {"exposure_id": str(i), "label": lab, "grade": g, "also": (also or {}).get(i, [])}
        for i, (g, lab) in enumerate(zip(grades, labels, strict=True))
    ]
    path.mkdir(parents=True)
    (path / "report.json").write_text(json.dumps({"agreement": {"rows": rows}}))


def test_discordant_exposures_decide_and_also_grades_count(tmp_path):
    labels = ["GOOD"] * 10
    _report(tmp_path / "a-s1", ["GOOD"] * 9 + ["BT"], labels)
    # the candidate loses exposure 0, wins 9, and exposure 1's grade is one of its 'also'
    _report(tmp_path / "b-s1", ["BT", "BGP"] + ["GOOD"] * 8, labels, also={1: ["BGP"]})
    _report(tmp_path / "a-s2", ["GOOD", "BT"], ["GOOD", "GOOD"])
    _report(tmp_path / "b-s2", ["GOOD", "GOOD"], ["GOOD", "GOOD"])
    rows = dict(compare(str(tmp_path / "a-{set}"), str(tmp_path / "b-{set}"), ["s1", "s2"]))
    s1, pooled = rows["s1"], rows["pooled"]
    assert (s1.n, s1.base, s1.candidate, s1.b, s1.c) == (10, 9, 9, 1, 1)
    assert (pooled.n, pooled.b, pooled.c) == (12, 1, 2)
    assert pooled.p == pytest.approx(mcnemar_p(1, 2)) == pytest.approx(1.0)


def test_mcnemar_is_the_exact_binomial_test():
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_p(2, 8) == pytest.approx(mcnemar_p(8, 2)) == pytest.approx(112 / 1024)


def test_errors_name_the_file_and_a_template_without_set(tmp_path, capsys):
    _report(tmp_path / "a-s1", ["GOOD"], ["GOOD"])
    assert (
        main(["--base", str(tmp_path / "a-{set}"), "--candidate", str(tmp_path / "x-{set}"), "s1"])
        == 2
    )
    assert "x-s1" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text("{}")
    assert (
        main(["--base", str(tmp_path / "a-{set}"), "--candidate", str(tmp_path / "bad"), "s1"]) == 2
    )
    assert "no agreement rows" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--base", str(tmp_path / "a-s1"), "--candidate", str(tmp_path / "a-s1"), "s1", "s2"])
    assert "has no {set}" in capsys.readouterr().err
    assert (
        main(["--base", str(tmp_path / "a-{set}"), "--candidate", str(tmp_path / "a-{set}"), "s1"])
        == 0
    )
    assert "| pooled | 1 | 1 | 1 | 0 | 0 | 1 |" in capsys.readouterr().out
