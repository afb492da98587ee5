import json

from searchsvc.domain.types import Document
from searchsvc.ingest.chunking import Chunker
from searchsvc.ingest.loaders import load_documents


def test_beir_jsonl(tmp_path):
    (tmp_path / "corpus.jsonl").write_text(
        json.dumps({"_id": "4983", "title": "T", "text": "Body", "metadata": {"year": 2001}}) + "\n\n"
    )
    [doc] = load_documents(tmp_path)
    assert (doc.id, doc.title, doc.text, doc.metadata) == ("4983", "T", "Body", {"year": "2001"})


def test_csv_extra_columns_become_metadata(tmp_path):
    path = tmp_path / "docs.csv"
    path.write_text('id,title,text,team\n1,Hello,"a, b",core\n')
    [doc] = load_documents(path)
    assert (doc.id, doc.title, doc.text, doc.metadata) == ("1", "Hello", "a, b", {"team": "core"})


def test_folder_of_markdown(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.md").write_text("# Install guide\n\nRun make.\n")
    (tmp_path / "b.txt").write_text("plain")
    (tmp_path / "skip.bin").write_bytes(b"\0")
    docs = {d.id: d for d in load_documents(tmp_path)}
    assert sorted(docs) == ["b.txt", "sub/a.md"]
    assert docs["sub/a.md"].title == "Install guide"
    assert docs["b.txt"].title == "b"


def test_chunks_have_deterministic_ids_and_offsets():
    text = " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(200))
    chunker = Chunker(chunk_size=64, chunk_overlap=8)
    chunks = chunker.chunk(Document("doc-1", text))
    assert len(chunks) > 3
    assert [c.id for c in chunks] == [f"doc-1#{i}" for i in range(len(chunks))]
    assert [c.id for c in chunker.chunk(Document("doc-1", text))] == [c.id for c in chunks]
    for c in chunks:
        assert text[c.start_char : c.end_char] == c.text


def test_wrapped_lines_chunk_as_the_same_words_unwrapped():
    """A PDF's text layer breaks lines where the page wrapped them; the chunks fall where they would in the
    unwrapped text, and each keeps its own line breaks (offsets still slice the text it came from)."""
    words = [f"단어{i}는 검색 품질을 {i % 9}번 바꾸고" for i in range(300)]  # one sentence, longer than a chunk
    flat = " ".join(words)
    wrapped = "".join(w + ("\n" if i % 3 == 2 else " ") for i, w in enumerate(words)).rstrip()
    chunker = Chunker(chunk_size=64, chunk_overlap=8)
    a, b = chunker.chunk(Document("d", flat)), chunker.chunk(Document("d", wrapped))
    assert len(a) > 3 and [(c.start_char, c.end_char) for c in a] == [(c.start_char, c.end_char) for c in b]
    assert [" ".join(c.text.split()) for c in a] == [" ".join(c.text.split()) for c in b]
    assert any("\n" in c.text for c in b) and all(wrapped[c.start_char : c.end_char] == c.text for c in b)
