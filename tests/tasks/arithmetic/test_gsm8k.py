"""GSM8K-format files: real GSM8K rows load, bad rows are named by file and row, saving round-trips."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fastzero.tasks.arithmetic.gsm8k import final_answer, read_gsm8k, save_gsm8k
from fastzero.tasks.arithmetic.problems import generate_word_problems

# The first training row of GSM8K (openai/grade-school-math, MIT), verbatim.
GSM8K_ROW = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
                "May. How many clips did Natalia sell altogether in April and May?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
              "altogether in April and May.\n#### 72",
}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_gsm8k_row_jsonl_and_parquet(tmp_path):
    report = read_gsm8k(write_jsonl(tmp_path / "train.jsonl", [GSM8K_ROW]))
    (p,) = report.problems
    assert (p.answer, p.question, p.expression) == (72, GSM8K_ROW["question"], "")
    assert p.solution == GSM8K_ROW["answer"]
    pq.write_table(pa.table({"question": [GSM8K_ROW["question"]], "answer": [GSM8K_ROW["answer"]]}),
                   tmp_path / "train.parquet")
    assert read_gsm8k(tmp_path / "train.parquet").problems == report.problems


@pytest.mark.parametrize("text,value", [("#### 72", 72), ("a\n#### -3", -3), ("#### 1,234", 1234),
                                        ("x #### 5\n#### 6 ", 6), ("####\t+8\n", 8)])
def test_final_answer(text, value):
    assert final_answer(text) == value


BAD_ROWS = [
    ('[1, 2]', "expected an object"),
    ('{"answer": "#### 3"}', "missing or empty 'question'"),
    ('{"question": "  ", "answer": "#### 3"}', "missing or empty 'question'"),
    ('{"question": "q?", "answer": 3}', "'answer' must be text"),
    ('{"question": "q?", "answer": "three"}', "no '####'"),
    ('{"question": "q?", "answer": "#### 3.5"}', "'3.5' is not an integer"),
    ('{"question": "q?", "answer": "#### 12 apples"}', "is not an integer"),
    ('{"question": "q?", "answer": "#### 3", "expression": 7}', "'expression' must be text"),
    ('{"question": "q?", "answer": ', "invalid JSON"),
]


@pytest.mark.parametrize("line,message", BAD_ROWS)
def test_bad_row_named_by_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "data.jsonl", [GSM8K_ROW, "", line])
    with pytest.raises(ValueError) as err:
        read_gsm8k(path)
    assert str(err.value).startswith(f"{path}: line 3: ") and message in str(err.value)
    report = read_gsm8k(path, skip_bad=True)
    assert len(report.problems) == 1 and len(report.skipped) == 1 and "line 3" in report.skipped[0]


def test_bad_parquet_row_and_file(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"question": ["q?", "r?"], "answer": ["#### 1", "#### x"]}), path)
    with pytest.raises(ValueError, match=r"bad.parquet: row 1: .*not an integer"):
        read_gsm8k(path)
    pq.write_table(pa.table({"text": ["q"]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="no question/answer/expression column"):
        read_gsm8k(tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="unknown file type"):
        read_gsm8k(tmp_path / "data.csv")
    with pytest.raises(FileNotFoundError):
        read_gsm8k(tmp_path / "missing.jsonl")


def test_generated_problems_round_trip(tmp_path):
    problems = generate_word_problems(50, seed=3)
    save_gsm8k(problems, tmp_path / "gen.jsonl")
    assert read_gsm8k(tmp_path / "gen.jsonl").problems == problems
    with pytest.raises(ValueError, match=".jsonl"):
        save_gsm8k(problems, tmp_path / "gen.parquet")
