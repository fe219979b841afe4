"""The emotion labels, in the order of the model's output (the `proj` head and tokens.txt)."""

LABELS: tuple[str, ...] = (
    "angry",
    "disgusted",
    "fearful",
    "happy",
    "neutral",
    "other",
    "sad",
    "surprised",
    "unknown",
)

UNUSED_PREFIX = "unuse"


def label_from_token(token: str) -> str:
    """Turn one tokens.txt line (`生气/angry`, `<unk>`, `unuse_3`) into the label we report.

    FunASR keeps bilingual tokens; clients want the English word. `<unk>` is the model's
    "unknown" class. Tokens starting with "unuse" stay as they are: the model masks them.
    """
    token = token.rstrip()
    if token == "<unk>":
        return "unknown"
    if token.startswith(UNUSED_PREFIX):
        return token
    return token.rsplit("/", 1)[-1]
