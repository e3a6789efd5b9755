"""Merge the Prometheus text expositions of a supervisor's worker processes into one.

Each sample gets a ``process`` label (``"0"`` .. ``"N-1"``, the index of the worker process, stable
across its restarts), so the series count is the single worker's times N (bounded by ``--processes``),
and no value is summed here: a counter of a restarted process resets on its own series, which
``rate()`` handles, where a sum over processes would go backwards.  Dashboards aggregate with
``sum``/``max`` as they do across pods.

Works on the text format 0.0.4 as ``prometheus_client.generate_latest`` writes it: a family's
``# HELP``/``# TYPE`` lines, then its samples.  Families come out once each, in first-seen order,
with the samples of every process under them.
"""

from __future__ import annotations

from collections.abc import Iterable

PROCESS_LABEL = "process"


def with_label(sample: bytes, label: bytes) -> bytes:
    """``name{a="b"} 1`` -> ``name{<label>,a="b"} 1``; ``name 1`` -> ``name{<label>} 1``.

    A metric name holds neither ``{`` nor a space, so the first of them ends it.
    """
    space = sample.find(b" ")
    brace = sample.find(b"{")
    if brace != -1 and (space == -1 or brace < space):
        rest = sample[brace + 1:]
        return sample[:brace + 1] + label + (b"" if rest.startswith(b"}") else b",") + rest
    if space == -1:
        return sample
    return sample[:space] + b"{" + label + b"}" + sample[space:]


def merge_expositions(parts: Iterable[tuple[str, bytes]], label_name: str = PROCESS_LABEL) -> bytes:
    """One exposition from ``(label value, exposition)`` pairs; each sample labelled ``label_name``."""
    headers: dict[bytes, list[bytes]] = {}
    samples: dict[bytes, list[bytes]] = {}
    for value, text in parts:
        label = f'{label_name}="{value}"'.encode()
        family: bytes | None = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith(b"#"):
                words = line.split(b" ", 3)
                if len(words) >= 3 and words[1] in (b"HELP", b"TYPE"):
                    family = words[2]
                    kinds = headers.setdefault(family, [])
                    samples.setdefault(family, [])
                    if not any(h.split(b" ", 2)[1] == words[1] for h in kinds):
                        kinds.append(line)
                continue
            if family is None:  # a sample before any header: its own family, keyed by its name
                family = line.split(b"{", 1)[0].split(b" ", 1)[0]
                headers.setdefault(family, [])
                samples.setdefault(family, [])
            samples[family].append(with_label(line, label))
    out: list[bytes] = []
    for family, lines in headers.items():
        out.extend(lines)
        out.extend(samples[family])
    return b"\n".join(out) + b"\n" if out else b""
