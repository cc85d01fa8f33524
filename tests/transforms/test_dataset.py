"""Labelled archives (skygrade.transforms.dataset): labels with other grades, catalogs found by
name."""

import shutil

import pytest

from skygrade.transforms.dataset import find_archive, read_label_sets, read_labels


def test_also_column_lists_other_grades_a_person_gave(tmp_path):
    (tmp_path / "labels.csv").write_text(
        "exposure_id,label,also,comment\n"
        "1625588,BGP,B_SEEING,moon\n731965,BGP,B_SEEING|BT,\n1625583,GOOD,,\n"
    )
    labels = read_label_sets(tmp_path)
    assert labels.label == {"1625588": "BGP", "731965": "BGP", "1625583": "GOOD"}
    assert labels.also == {"1625588": {"B_SEEING"}, "731965": {"B_SEEING", "BT"}}
    assert read_labels(tmp_path) == labels.label


def test_a_bad_also_grade_names_the_line(tmp_path):
    (tmp_path / "labels.csv").write_text("exposure_id,label,also\n1,GOOD,\n2,BT,SOSO\n")
    with pytest.raises(ValueError, match="line 3: also 'SOSO' is not one of"):
        read_label_sets(tmp_path)


def test_catalogs_named_as_sextractor_pipelines_name_them_are_found(tmp_path):
    for name in ("1625583p.fits.ldac.gz", "1625584p.fits.ldac", "1625586p.cat", "999p.txt"):
        (tmp_path / name).write_bytes(b"")
    night = tmp_path / "2016-03-02"
    night.mkdir()
    shutil.move(tmp_path / "1625586p.cat", night / "1625586p.cat")
    (tmp_path / "labels.csv").write_text(
        "exposure_id,label\n1625583,GOOD\n1625584,BT\n1625586,RBT\n999,GOOD\n"
    )
    items = find_archive(tmp_path)
    assert [(i.exposure_id, i.label) for i in items] == [
        ("1625583", "GOOD"),
        ("1625584", "BT"),
        ("1625586", "RBT"),
    ]
    assert [i.night for i in items] == ["unknown", "unknown", "2016-03-02"]
