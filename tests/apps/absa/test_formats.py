"""Readers and writers of the ABSA formats: SemEval-2014 XML, Twitter (Dong et al.), TNet tags."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from apps.absa.formats import (
    FORMATS,
    POLARITIES,
    AspectExample,
    read_examples,
    read_semeval_xml,
    read_tnet,
    read_twitter,
    write_semeval_xml,
)


def example(sentence_id: str, text: str, term: str, polarity: str, **extra) -> AspectExample:
    start = text.index(term)
    return AspectExample(sentence_id, text, term, start, start + len(term), polarity, **extra)


def semeval(path: Path, body: str) -> Path:
    path.write_text(f'<?xml version="1.0" encoding="UTF-8"?>\n<sentences>\n{body}</sentences>\n')
    return path


def sentence_xml(sentence_id: str, text: str, *terms: str) -> str:
    aspects = f"<aspectTerms>{''.join(terms)}</aspectTerms>" if terms else ""
    return f'<sentence id="{sentence_id}">\n<text>{text}</text>\n{aspects}\n</sentence>\n'


# --------------------------------------------------------------------------------------------------
# SemEval XML
# --------------------------------------------------------------------------------------------------


def test_semeval_round_trip_multi_aspect_and_special_characters(tmp_path):
    text = 'the "fish & chips" were <great> but the crème brûlée wasn\'t , sadly .'
    examples = [
        example("s1", text, '"fish & chips"', "positive", opinion="great", negated=False),
        example("s1", text, "crème brûlée", "negative"),
        example("s2", "  tab\there & a\nnewline\r ok ", "tab\there &", "neutral"),
        example("s1 & <x>", "price < value", "price", "negative", opinion="value", negated=True),
    ]
    path = tmp_path / "rt.xml"
    write_semeval_xml(path, examples)
    assert read_semeval_xml(path) == examples
    raw = path.read_text(encoding="utf-8")
    assert raw.count("<sentence ") == 3  # one element per sentence id, text written once
    assert raw.count("crème brûlée") == 2  # UTF-8, not character references
    assert not list(tmp_path.glob(".*.tmp"))


def test_semeval_writer_rejects_bad_offsets_and_conflicting_texts(tmp_path):
    bad = AspectExample("s1", "the food", "food", 0, 3, "positive")
    with pytest.raises(ValueError, match=r"out\.xml.*'s1'"):
        write_semeval_xml(tmp_path / "out.xml", [bad])
    a = example("s1", "the food", "food", "positive")
    b = example("s1", "the wine", "wine", "positive")
    with pytest.raises(ValueError, match="two different texts"):
        write_semeval_xml(tmp_path / "out.xml", [a, b])
    assert not (tmp_path / "out.xml").exists()


def test_semeval_reads_real_layout_drops_conflict_and_skips_sentences_without_aspects(tmp_path, caplog):
    body = (
        sentence_xml(
            "1",
            "but the staff was so horrible to us .",
            '<aspectTerm term="staff" polarity="negative" from="8" to="13"/>',
        )
        + sentence_xml("2", "to be completely fair , the only redeeming factor was the food .")
        + sentence_xml(
            "3",
            "the food was great but the service slow .",
            '<aspectTerm term="food" polarity="positive" from="4" to="8"/>',
            '<aspectTerm term="service" polarity="conflict" from="27" to="34"/>',
        )
        + '<sentence id="4"><text>decor ok</text><aspectCategories><aspectCategory category="ambience" '
        'polarity="neutral"/></aspectCategories></sentence>\n'
    )
    path = semeval(tmp_path / "Restaurants_Train.xml", body)
    with caplog.at_level(logging.INFO, logger="apps.absa.formats"):
        examples = read_semeval_xml(path)
    assert [(e.sentence_id, e.term, e.polarity) for e in examples] == [
        ("1", "staff", "negative"),
        ("3", "food", "positive"),
    ]
    assert examples[0].opinion is None and examples[0].negated is False
    assert any(
        "dropped 1" in record.getMessage() and "conflict" in record.getMessage() for record in caplog.records
    )


def test_semeval_offset_mismatch_names_file_sentence_and_both_strings(tmp_path):
    body = sentence_xml("a", "x", '<aspectTerm term="x" polarity="neutral" from="0" to="1"/>') + sentence_xml(
        "813:1", "the food was great .", '<aspectTerm term="food" polarity="positive" from="3" to="7"/>'
    )
    path = semeval(tmp_path / "mismatch.xml", body)
    with pytest.raises(ValueError) as info:
        read_semeval_xml(path)
    message = str(info.value)
    assert "mismatch.xml" in message and "'813:1'" in message
    assert "'food'" in message and "' foo'" in message
    assert "mismatch.xml:7:" in message  # the line of the sentence


@pytest.mark.parametrize(
    ("aspect", "expected"),
    [
        ('<aspectTerm term="food" polarity="great" from="4" to="8"/>', "unknown polarity 'great'"),
        ('<aspectTerm term="food" polarity="positive" from="four" to="8"/>', "non-integer offsets"),
        ('<aspectTerm term="food" polarity="positive" to="8"/>', "without attribute"),
        ('<aspectTerm term="food" polarity="positive" from="4" to="8" negated="yes"/>', "negated='yes'"),
    ],
)
def test_semeval_attribute_errors_name_file_and_sentence(tmp_path, aspect, expected):
    path = semeval(tmp_path / "bad.xml", sentence_xml("s-9", "the food was great .", aspect))
    with pytest.raises(ValueError, match=expected) as info:
        read_semeval_xml(path)
    assert "bad.xml" in str(info.value) and "'s-9'" in str(info.value)


def test_semeval_missing_text_names_file_and_sentence(tmp_path):
    path = semeval(
        tmp_path / "notext.xml",
        '<sentence id="42"><aspectTerms><aspectTerm term="a" polarity="neutral" from="0" to="1"/>'
        "</aspectTerms></sentence>\n",
    )
    with pytest.raises(ValueError, match=r"notext\.xml.*'42'.*missing <text>"):
        read_semeval_xml(path)


def test_semeval_malformed_xml_names_file_and_position(tmp_path):
    path = tmp_path / "broken.xml"
    path.write_text('<sentences>\n<sentence id="1">\n<text>fish & chips</text>\n</sentence>\n</sentences>\n')
    with pytest.raises(ValueError, match=r"broken\.xml:3:\d+: malformed XML"):
        read_semeval_xml(path)


def test_semeval_generator_attributes_are_read(tmp_path):
    path = semeval(
        tmp_path / "gen.xml",
        sentence_xml(
            "g1",
            "the pasta was not great .",
            '<aspectTerm term="pasta" polarity="negative" from="4" to="9" opinion="great" negated="true"/>',
        ),
    )
    (parsed,) = read_semeval_xml(path)
    assert parsed.opinion == "great" and parsed.negated is True and parsed.polarity == "negative"


def test_readers_missing_and_empty_files(tmp_path):
    for reader in (read_semeval_xml, read_twitter, read_tnet, read_examples):
        with pytest.raises(FileNotFoundError, match="nowhere.txt"):
            reader(tmp_path / "nowhere.txt")
    empty_xml = semeval(tmp_path / "empty.xml", sentence_xml("1", "no aspects here ."))
    with pytest.raises(ValueError, match=r"empty\.xml: no aspect terms"):
        read_semeval_xml(empty_xml)
    (tmp_path / "empty.txt").write_text("\n\n")
    for reader in (read_twitter, read_tnet):
        with pytest.raises(ValueError, match=r"empty\.txt: no examples"):
            reader(tmp_path / "empty.txt")


# --------------------------------------------------------------------------------------------------
# Twitter
# --------------------------------------------------------------------------------------------------


TWITTER = (
    "i love my $T$ , best phone ever\n"
    "iphone\n"
    "1\n"
    "$T$ is playing tonight\n"
    "lady gaga\n"
    "0\n"
    "why does $T$ keep crashing\n"
    "windows 7\n"
    "-1\n"
)


def test_twitter_reader(tmp_path):
    path = tmp_path / "train.raw"
    path.write_text(TWITTER + "\n\n")  # trailing blank lines are tolerated
    examples = read_twitter(path)
    assert [e.polarity for e in examples] == ["positive", "neutral", "negative"]
    assert [e.sentence_id for e in examples] == ["train:1", "train:4", "train:7"]
    first, second, third = examples
    assert first.text == "i love my iphone , best phone ever"
    assert second.text == "lady gaga is playing tonight"
    assert third.term == "windows 7"
    for e in examples:
        assert e.text[e.start : e.end] == e.term


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (TWITTER.replace("why does $T$", "why does it"), r"tw\.raw:7: .*no \$T\$ placeholder"),
        (TWITTER.replace("\n0\n", "\n2\n"), r"tw\.raw:6: label '2'"),
        (TWITTER + "one more $T$\ntarget\n", r"tw\.raw:10: incomplete example"),
        (TWITTER.replace("lady gaga\n", "\n"), r"tw\.raw:5: blank line"),
    ],
)
def test_twitter_errors_name_file_and_line(tmp_path, content, expected):
    path = tmp_path / "tw.raw"
    path.write_text(content)
    with pytest.raises(ValueError, match=expected):
        read_twitter(path)


# --------------------------------------------------------------------------------------------------
# TNet
# --------------------------------------------------------------------------------------------------


def test_tnet_reader(tmp_path):
    path = tmp_path / "test.txt"
    path.write_text(
        "the/O battery/T-POS life/T-POS is/O great/O ./O\n"
        "\n"
        "1/2/O price/O ,/O bad/O screen/T-NEG\n"
        "it/T-NEU works/O\n"
    )
    examples = read_tnet(path)
    assert [(e.term, e.polarity) for e in examples] == [
        ("battery life", "positive"),
        ("screen", "negative"),
        ("it", "neutral"),
    ]
    assert examples[0].text == "the battery life is great ."
    assert examples[1].text == "1/2 price , bad screen"  # split on the last "/"
    assert [e.sentence_id for e in examples] == ["test:1", "test:3", "test:4"]
    for e in examples:
        assert e.text[e.start : e.end] == e.term


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("the/O food/O was/O good/O", "no target tokens"),
        ("food/T-POS and/O wine/T-POS", "more than one target run"),
        ("goat/T-POS cheese/T-NEG", "mixed polarities"),
        ("food/T-POSITIVE was/O good/O", "unknown tag 'T-POSITIVE'"),
        ("food/T-POS was good/O", "token 'was' is not of the form word/TAG"),
        ("/O food/T-POS", "token '/O' is not of the form word/TAG"),
    ],
)
def test_tnet_errors_name_file_and_line(tmp_path, line, expected):
    path = tmp_path / "tn.txt"
    path.write_text(f"the/O food/T-POS\n{line}\n")
    with pytest.raises(ValueError, match=expected) as info:
        read_tnet(path)
    assert "tn.txt:2:" in str(info.value)


# --------------------------------------------------------------------------------------------------
# read_examples
# --------------------------------------------------------------------------------------------------


def test_read_examples_detects_format(tmp_path):
    xml = tmp_path / "data.xml"
    write_semeval_xml(xml, [example("1", "the food was great .", "food", "positive")])
    twitter = tmp_path / "data.raw"
    twitter.write_text(TWITTER)
    tnet = tmp_path / "data.txt"
    tnet.write_text("the/O food/T-POS\n")
    assert read_examples(xml) == read_semeval_xml(xml)
    assert read_examples(twitter) == read_twitter(twitter)
    assert read_examples(tnet) == read_tnet(tnet)
    assert read_examples(tnet, fmt="tnet") == read_tnet(tnet)
    with pytest.raises(ValueError, match=r"data\.raw:1: token 'i' is not of the form word/TAG"):
        read_examples(twitter, fmt="tnet")
    with pytest.raises(ValueError, match="semeval_xml.*twitter.*tnet"):
        read_examples(xml, fmt="json")
    assert FORMATS == ("semeval_xml", "twitter", "tnet")
    assert POLARITIES == ("negative", "neutral", "positive")


def test_reader_reports_invalid_utf8_line(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"the/O food/T-POS\ncaf\xe9/O food/T-POS\n")
    with pytest.raises(ValueError, match=r"latin\.txt:2: not valid UTF-8"):
        read_tnet(path)
