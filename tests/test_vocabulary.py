"""darkroom.engines.vocabulary: the words of a prompt a model does not know (unit tests, torch-free)."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from darkroom.engines.vocabulary import prompt_warnings, read_vocabulary, unknown_words, vocabulary_path, words

SHIPPED = Path(__file__).resolve().parents[1] / "models"


def test_unknown_words_are_named_once_in_prompt_order():
    vocab = {"a", "red", "circle", "on", "the", "left", "of", "blue", "square", "five-pointed"}
    assert unknown_words("a red circle on the left of a blue square", vocab) == []
    assert unknown_words("A Cat on a SOFA, a cat!", vocab) == ["cat", "sofa"]
    assert unknown_words("a scarlet ball next to a cobalt cube", vocab) == ["scarlet", "ball", "next", "to", "cobalt",
                                                                             "cube"]
    assert unknown_words("", vocab) == [] and unknown_words("  ,.!  ", vocab) == []
    assert words("a five-pointed star, isn't it? 3 dots") == ["a", "five-pointed", "star", "isn't", "it", "3", "dots"]
    assert unknown_words("a five-pointed square", vocab) == []


def test_read_vocabulary_ignores_comments_blank_lines_and_case(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("# words\nRed\n\n  circle  # a shape\n")
    assert read_vocabulary(path) == {"red", "circle"}
    assert vocabulary_path("/m/mini", {"vocabulary": "vocabulary.txt"}) == Path("/m/mini/vocabulary.txt")
    assert vocabulary_path("/m/mini", {"vocabulary": "/etc/words"}) == Path("/etc/words")
    assert vocabulary_path("/m/mini", {}) is None


def _registry(tmp_path, vocabulary: str | None) -> SimpleNamespace:
    model = tmp_path / "mini"
    model.mkdir()
    (model / "words.txt").write_text("a\nred\ncircle\n")
    option = f'vocabulary = "{vocabulary}"\n' if vocabulary else ""
    registry = tmp_path / "models.toml"
    registry.write_text(f'default = "mini"\n[models.mini]\npath = "mini"\n[models.mini.options]\n{option}')
    return SimpleNamespace(resolved_models_file=lambda: registry, aliases=["tiny=mini"])


def test_prompt_warnings_read_the_models_registry_entry(tmp_path):
    settings = _registry(tmp_path, "words.txt")
    assert prompt_warnings(settings, "mini", "a red circle") == []
    assert prompt_warnings(settings, "mini", "a red cat on a sofa") == ["words mini does not know: cat, on, sofa"]
    assert prompt_warnings(settings, "tiny", "a cat") == ["words mini does not know: cat"]  # an alias
    assert prompt_warnings(settings, "nope", "a cat") == []  # an unknown model: no warning, no error


def test_prompt_warnings_without_a_vocabulary_say_nothing(tmp_path):
    assert prompt_warnings(_registry(tmp_path, None), "mini", "a cat on a sofa") == []
    (tmp_path / "b").mkdir()
    broken = _registry(tmp_path / "b", "missing.txt")
    assert prompt_warnings(broken, "mini", "a cat") == []  # an unreadable list is logged, not raised


def test_darkroom_mini_registry_entry_names_its_vocabulary():
    from darkroom.engines.registry import load_registry

    spec = load_registry(SHIPPED / "models.toml").get("darkroom-mini")
    path = vocabulary_path(spec.path, spec.options)
    assert path == SHIPPED / "darkroom-mini" / "vocabulary.txt" and path.is_file()
    settings = SimpleNamespace(resolved_models_file=lambda: SHIPPED / "models.toml", aliases=[])
    assert prompt_warnings(settings, "darkroom-mini", "a cat on a sofa") == [
        "words darkroom-mini does not know: cat, sofa"]
    assert prompt_warnings(settings, "darkroom-mini", "make the red star blue") == []
