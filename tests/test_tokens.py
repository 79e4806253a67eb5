import pytest

from fusion.core.tokens import TokenTable, TokenTableError, character_table


def test_character_table_spells_and_reads_text(table):
    assert len(table) == 29 and table.blank == "<blank>" and table.boundary_id == 1
    ids = table.ids_from_text("hi there")
    assert ids == [table.id_of(c) for c in "hi"] + [1] + [table.id_of(c) for c in "there"]
    assert table.text_from_ids(ids) == "hi there"
    # boundaries at the edges or doubled make no empty words
    assert table.text_from_ids([1, 1, *ids, 1]) == "hi there"


def test_prefix_table_joins_pieces():
    t = TokenTable(("<b>", "▁hi", "▁the", "re", "s"), blank_id=0, word_boundary="▁",
                   boundary_style="prefix")
    assert t.boundary_id is None
    assert t.text_from_ids([1, 2, 3, 4]) == "hi theres"
    assert t.words_from_ids([3, 1, 4]) == [[3], [1, 4]]
    with pytest.raises(TokenTableError, match="tokenizer"):
        t.ids_from_text("hi")


def test_round_trip(tmp_path, table):
    table.save(tmp_path / "t.json")
    assert TokenTable.load(tmp_path / "t.json") == table


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tokens=(), blank_id=0, word_boundary="|"), "empty"),
        (dict(tokens=("a", "a"), blank_id=0, word_boundary="a"), "appears twice"),
        (dict(tokens=("<b>", "|"), blank_id=2, word_boundary="|"), "outside the table"),
        (dict(tokens=("<b>", "|"), blank_id=True, word_boundary="|"), "must be an int"),
        (dict(tokens=("<b>", "a"), blank_id=0, word_boundary="|"), "not a token"),
        (dict(tokens=("|", "a"), blank_id=0, word_boundary="|"), "must be different"),
        (dict(tokens=("<b>", "a"), blank_id=0, word_boundary="▁", boundary_style="prefix"),
         "no token starts"),
        (dict(tokens=("<b>", "|"), blank_id=0, word_boundary="|", boundary_style="bpe"),
         "boundary_style"),
        (dict(tokens=("<b>", ""), blank_id=0, word_boundary="|"), "non-empty"),
    ],
)
def test_invalid_tables(kwargs, message):
    with pytest.raises(TokenTableError, match=message):
        TokenTable(**kwargs)


def test_unknown_character_is_named(table):
    with pytest.raises(TokenTableError, match="'é' in 'café'"):
        table.ids_from_text("a café")


def test_bad_files(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TokenTableError, match="bad.json"):
        TokenTable.load(tmp_path / "bad.json")
    (tmp_path / "extra.json").write_text('{"tokens": ["a","|"], "blank_id": 0, '
                                         '"word_boundary": "|", "colour": 1}')
    with pytest.raises(TokenTableError, match="unknown key.*colour"):
        TokenTable.load(tmp_path / "extra.json")
    with pytest.raises(TokenTableError, match="missing key.*blank_id"):
        TokenTable.from_dict({"tokens": ["a"], "word_boundary": "a"})
    assert character_table() == character_table()
