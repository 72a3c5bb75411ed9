"""The embedded tiny Countdown model: synthetic corpus, trained tokenizer, pretraining, build CLI.

`python -m fastzero.tiny build --out fastzero/assets/tiny-countdown` rebuilds the shipped checkpoint
that `python -m fastzero.train` trains by default on CPU. See fastzero/assets/tiny-countdown/BUILD.md.
"""
