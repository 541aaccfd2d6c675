"""The dedup report: counts per source and modality, the largest groups, and a PNG grid of example groups."""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pyarrow as pa
from PIL import Image, ImageDraw

from medscale.core.storage import full_url, join, put_bytes_atomic
from medscale.data.manifest import DUPLICATE
from medscale.data.png import decode_png
from medscale.data.shards import read_members
from medscale.hashing.hashes import to_8bit

REPORT_DIR = "dedup"
TILE = 112
PER_ROW = 8


def counts_by_source(table: pa.Table) -> List[Dict[str, Any]]:
    """One row per (source, modality): samples, kept, duplicates, reduction."""
    cols = table.select(["source", "modality", "status"]).to_pydict()
    total: Counter = Counter()
    dups: Counter = Counter()
    for source, modality, status in zip(cols["source"], cols["modality"], cols["status"]):
        total[(source, modality)] += 1
        dups[(source, modality)] += status == DUPLICATE
    return [{"source": s, "modality": m, "samples": n, "kept": n - dups[(s, m)], "duplicates": dups[(s, m)],
             "reduction": dups[(s, m)] / n} for (s, m), n in sorted(total.items(), key=lambda kv: str(kv[0]))]


def largest_groups(table: pa.Table, top: int = 20) -> List[Dict[str, Any]]:
    """The biggest duplicate groups: exemplar key and its members (exemplar first), largest first."""
    cols = table.select(["key", "status", "duplicate_of", "dedup_distance", "shard", "source", "volume"]).to_pydict()
    members: Dict[str, List[Tuple[str, float]]] = defaultdict(list)
    info = {k: (sh, so, v) for k, sh, so, v in zip(cols["key"], cols["shard"], cols["source"], cols["volume"])}
    for key, status, of, dist in zip(cols["key"], cols["status"], cols["duplicate_of"], cols["dedup_distance"]):
        if status == DUPLICATE and of is not None:
            members[of].append((key, float(dist or 0.0)))
    ranked = sorted(members.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:top]
    return [{"exemplar": ex, "size": 1 + len(dups), "source": info.get(ex, (None,) * 3)[1],
             "volume": info.get(ex, (None,) * 3)[2],
             "members": [{"key": ex, "shard": info.get(ex, (None,))[0], "distance": 0.0}]
             + [{"key": k, "shard": info.get(k, (None,))[0], "distance": d} for k, d in sorted(dups)]}
            for ex, dups in ranked]


def _tile(data: Optional[bytes], caption: str, outline: bool) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE + 14), "white")
    if data is not None:
        img = Image.fromarray(to_8bit(decode_png(data))).convert("RGB")
        scale = (TILE - 4) / max(img.width, img.height)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)
        tile.paste(img, ((TILE - img.width) // 2, (TILE - img.height) // 2))
    draw = ImageDraw.Draw(tile)
    if outline:
        draw.rectangle([0, 0, TILE - 1, TILE - 1], outline=(0, 160, 0), width=3)
    draw.text((2, TILE), caption[:18], fill="black")
    return tile


def group_grid(fs, root: str, groups: Sequence[Dict[str, Any]], rows: int) -> Optional[bytes]:
    """PNG bytes: one row per group, the exemplar (green frame) then its duplicates with their distances."""
    groups = [g for g in groups if all(m["shard"] for m in g["members"])][:rows]
    if not groups:
        return None
    sheet = Image.new("RGB", (TILE * PER_ROW, (TILE + 14) * len(groups)), "white")
    for r, group in enumerate(groups):
        shown = group["members"][:PER_ROW]
        by_shard: Dict[str, List[str]] = defaultdict(list)
        for m in shown:
            by_shard[m["shard"]].append(m["key"])
        images: Dict[str, bytes] = {}
        for shard, keys in by_shard.items():
            images.update(read_members(fs, root, shard, keys))
        for c, m in enumerate(shown):
            caption = "kept" if c == 0 else f"d={m['distance']:.3g}"
            sheet.paste(_tile(images.get(m["key"]), f"{caption} {m['key'][-8:]}", c == 0), (c * TILE, r * (TILE + 14)))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def _markdown(strategy: str, by_source: List[Dict[str, Any]], groups: List[Dict[str, Any]]) -> str:
    lines = [f"# medscale dedup: {strategy}", "", "| source | modality | samples | kept | duplicates | removed |",
             "|---|---|---|---|---|---|"]
    for row in by_source:
        lines.append(f"| {row['source']} | {row['modality'] or '-'} | {row['samples']} | {row['kept']} | "
                     f"{row['duplicates']} | {100 * row['reduction']:.1f}% |")
    lines += ["", "## Largest groups", "", "| exemplar | source | volume | size |", "|---|---|---|---|"]
    for g in groups:
        lines.append(f"| {g['exemplar']} | {g['source']} | {g['volume'] or '-'} | {g['size']} |")
    lines += ["", "![example groups](groups.png)", ""]
    return "\n".join(lines)


def write_report(fs, root: str, table: pa.Table, strategy: str, examples: int) -> Tuple[List[Dict[str, Any]], str]:
    """Write `ROOT/dedup/{report.json, report.md, groups.png}`; returns (counts by source, report URL)."""
    by_source = counts_by_source(table)
    groups = largest_groups(table)
    folder = join(root, REPORT_DIR)
    grid = group_grid(fs, root, groups, examples) if examples else None
    if grid:
        put_bytes_atomic(fs, join(folder, "groups.png"), grid)
    report = {"strategy": strategy, "by_source": by_source, "largest_groups": groups}
    put_bytes_atomic(fs, join(folder, "report.json"), json.dumps(report, indent=1).encode())
    put_bytes_atomic(fs, join(folder, "report.md"), _markdown(strategy, by_source, groups).encode())
    return by_source, full_url(fs, join(folder, "report.md"))
