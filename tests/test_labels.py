from cvat_tools import labels


def test_smear_classes_are_the_ten_thesis_classes():
    assert len(labels.SMEAR_CLASSES) == 10
    assert len(set(labels.ALL_CLASSES)) == 12


def test_aliases_map_to_canonical_names():
    assert labels.canonical("BAND") == "band cell"
    assert labels.canonical("Band Cells") == "band cell"
    assert labels.canonical("NEUTROPHIL") == "neutrophil"
    assert labels.canonical("SNE") == "neutrophil"
    assert labels.canonical("blast_cell") == "blast cell"
    assert labels.canonical("giraffe") is None


def test_label_map_wins_over_aliases():
    assert labels.resolve("band", {"band": "neutrophil"}) == "neutrophil"
    assert labels.resolve("BAND", {"band": "neutrophil"}) == "neutrophil"
    assert labels.resolve("lymphocytes", {"band": "neutrophil"}) == "lymphocyte"


def test_pbc_prefixes_give_fine_labels():
    assert labels.pbc_label("pbc/neutrophil/BNE_12345.jpg") == "band cell"
    assert labels.pbc_label("SNE_1.jpg") == "neutrophil"
    assert labels.pbc_label("ig/MMY_77.jpg") == "metamyelocyte"
    assert labels.pbc_label("ig/IG_77.jpg") is None
    assert labels.pbc_label("PLATELET_3.jpg") == "platelet"


def test_every_fine_class_folds_into_a_pbc_folder():
    for name in labels.PBC_FINE_CLASSES:
        assert labels.FINE_TO_PBC_FOLDER[name] in labels.PBC_FOLDERS
    assert set(labels.SHARED_CLASSES) <= set(labels.PBC_FINE_CLASSES)
    assert not set(labels.CLASSIFIER_FINAL) & set(labels.SHARED_CLASSES)


def test_real_pbc_file_names_are_all_known(pbc_dir):
    prefixes = {p.stem.rsplit("_", 1)[0].upper() for p in pbc_dir.glob("*/*.jpg")}
    assert prefixes <= set(labels.PBC_PREFIXES), prefixes - set(labels.PBC_PREFIXES)


def test_bccd_categories_split():
    assert labels.split_categories("NEUTROPHIL, EOSINOPHIL") == ["neutrophil", "eosinophil"]
    assert labels.split_categories("") == []


def test_peripheral_blood_prior_is_a_distribution_over_any_label_subset():
    import pytest

    from cvat_tools import labels as L

    assert set(L.PERIPHERAL_BLOOD_PRIOR) == set(L.ALL_CLASSES)
    for subset in (L.SHARED_CLASSES, L.PBC_FINE_CLASSES, L.ALL_CLASSES):
        w = L.prior_weights("peripheral-blood", subset)
        assert list(w) == list(subset) and abs(sum(w.values()) - 1) < 1e-9
        # the reference differential's order: neutrophils > lymphocytes > monocytes > rare cells
        assert w["neutrophil"] > w["lymphocyte"] > w["monocyte"] > w["basophil"] > w["promyelocyte"] > 0
    assert L.prior_weights("none", L.SHARED_CLASSES) is None
    with pytest.raises(ValueError, match="unknown prior"):
        L.prior_weights("leukaemia", L.SHARED_CLASSES)
    with pytest.raises(ValueError, match="no value"):
        L.prior_weights("peripheral-blood", ("neutrophil", "schistocyte"))
