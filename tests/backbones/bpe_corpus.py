"""Strings for tokenizer checks against OpenAI's tokenizer: preset prompts and varied text."""

from __future__ import annotations

import random

from ssrseg.cam.prompts import ClassPrompts
from ssrseg.data.toy import BACKGROUNDS, CLASS_NAMES
from ssrseg.toy.common import BACKGROUND_TEMPLATE

TOY_TEMPLATE = "a photo of a {}."  # configs/toy.yaml


def preset_prompts() -> dict[str, list[str]]:
    """Every sentence the VOC, COCO and toy presets feed the text tower (class prompts with
    synonyms, background words), per preset."""
    voc, coco = ClassPrompts.voc(), ClassPrompts.coco()
    toy = ClassPrompts(
        names=tuple(CLASS_NAMES),
        prompts=tuple(CLASS_NAMES),
        background=tuple(BACKGROUNDS),
        template=TOY_TEMPLATE,
    )
    return {
        "voc": [*voc.class_texts(), *voc.background_texts()],
        "coco": [*coco.class_texts(), *coco.background_texts()],
        "toy": [
            *toy.class_texts(),
            *toy.background_texts(),
            *(BACKGROUND_TEMPLATE.format(b) for b in BACKGROUNDS),
        ],
    }


HANDMADE = [
    "",
    "a",
    "A Photo Of A CAT.",
    "  leading and trailing  \t\n",
    "dog's tail, cat's whiskers; they're here, we've gone, I'm in, you'll see, he'd go",
    "DON'T SHOUT'S",
    "rock'n'roll o'clock 'quoted' ''double'' '''triple'''",
    "it’s a “curly” quote — and an en–dash…",
    "1234567890 3.14159 1,000,000 2nd 3rd x2 v1.2.3 0xFF 1e-5 -42",
    "½ ¾ ² ³ ⅓ Ⅻ ① ٣ ३ ௫ 𝟙",
    "!!! ??? ... ,,, ;;; ::: --- ___ *** ### @@@ $$$ %%% ^^^ ((( ))) [[[ ]]] {{{ }}}",
    "email@example.com https://example.com/a?b=c&d=e#frag C:\\path\\file.txt",
    "&amp; &lt;b&gt;bold&lt;/b&gt; &#39;s &quot;q&quot; &amp;amp; &nbsp;x &copy;",
    "café naïve Ångström Zürich crème brûlée São Paulo Łódź Dvořák façade",
    "cafe\u0301 decomposed e\u0301\u0301 a\u0308",
    "cafÃ© mojibake Ã¢â‚¬â„¢ â€œquotedâ€",
    "ＣＬＩＰ ｆｕｌｌｗｉｄｔｈ １２３ ﬁsh ﬂower ﬀ",
    "φωτογραφία μιας γάτας ᾳ ΣΊΣΥΦΟΣ",
    "фотография кошки Ёлка",
    "صورة قطة على الأريكة ١٢٣",
    "תמונה של חתול",
    "बिल्ली की तस्वीर १२३",
    "ภาพแมวบนโซฟา",
    "一只猫的照片 猫の写真です 고양이 사진",
    "ქართული Հայերեն ትግርኛ தமிழ் ລາວ မြန်မာ",
    "🐱🐶 👍🏽 👨‍👩‍👧 🇫🇷 ❤️ ☃ ♥",
    "symbols © ™ € £ ¥ ∑ ∫ → ⇒ ≤ ≥ ≠ ∞ ° µ ß",
    "tab\there\nnewline\r\ncrlf\u00a0nbsp\u3000ideographic\u2009thin\u200bzwsp\u2028ls",
    "control\x00\x07\x1b[31mred\x1b[0m\x1c\x1d\x1e\x1f\x7f\x85end",
    "long ſ: dog'ſ DOG'S ſtraße İstanbul ǅemal ﬅ",
    "combining \u0345 alone, α\u0345 composed",
    "a clean origami person with clothes,people,human.",
    "a photo of a cat. " * 30,  # longer than 77 tokens: truncated
    "pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism",
    "camelCaseWord snake_case_word kebab-case-word UPPER lower MiXeD",
    "\ud83d\ude00 surrogate-free emoji 😀 and math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
]

_WORDS = (
    "photo cat dog origami clean a of the bird avian person with clothes people human "
    "background sky ground tree water building airplane tv monitor screen"
).split()
_PIECES = [
    *_WORDS,
    *(s for s in HANDMADE[3:-5] if len(s) < 60),
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'", "’",
    "42", "7", "٣", "3.5", "100%", "#1", "$9.99",
    ".", ",", "!", "?", "-", "(", ")", "\"", "…", "/", "&", "&amp;",
    "é", "ü", "ñ", "ø", "ç", "ß", "ǆ", "ĳ",
    "猫", "犬", "ねこ", "кот", "γάτα", "قط", "חתול", "बिल्ली", "แมว", "고양이",
    "🐱", "🔥", "👍🏿", "🏳️‍🌈", "✨",
    "\t", "\n", "\u00a0", "\u2003",
]  # fmt: skip
_SEPARATORS = (" ", " ", " ", "", ", ", "  ", "-", "\n")


def varied_strings(n: int = 300, seed: int = 0) -> list[str]:
    """``HANDMADE`` plus ``n`` random mixtures of words, punctuation, digits, apostrophes,
    accents, other scripts, emoji and white space (deterministic)."""
    rng = random.Random(seed)
    out = list(HANDMADE)
    for _ in range(n):
        k = rng.randint(1, 12)
        parts = [rng.choice(_PIECES) for _ in range(k)]
        text = parts[0]
        for p in parts[1:]:
            text += rng.choice(_SEPARATORS) + p
        if rng.random() < 0.3:
            text = text.upper() if rng.random() < 0.5 else text.title()
        out.append(text)
    return out
