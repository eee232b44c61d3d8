"""Reading a Dockerfile and a .dockerignore the way `docker build` does, for tests without a Docker engine."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Instruction:
    stage: str
    keyword: str
    arguments: str


def instructions(dockerfile: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped, each tagged with its stage."""
    joined: list[str] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        joined.append(pending + line)
        pending = ""
    found = []
    stage = ""
    for line in joined:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = arguments.split()
            stage = words[2] if len(words) >= 3 and words[1].upper() == "AS" else words[0]
        found.append(Instruction(stage, keyword, arguments.strip()))
    return found


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match, plus `**` for any number of directories)."""
    regex = ""
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**/", index):
            regex += "(?:.*/)?"
            index += 3
            continue
        if pattern.startswith("**", index):
            regex += ".*"
            index += 2
            continue
        regex += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
        index += 1
    return re.compile(regex)


Rules = list[tuple[bool, str, re.Pattern[str]]]


def ignore_rules(dockerignore: Path) -> Rules:
    rules = []
    for raw in dockerignore.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rules.append((negated, pattern, _pattern_regex(pattern)))
    return rules


def is_sent(relative: str, rules: Rules) -> bool:
    """Whether `docker build` sends this path: the last rule matching it or a parent directory wins."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negated, _, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return not excluded


def _may_hold_sent_files(directory: str, rules: Rules) -> bool:
    if is_sent(directory, rules):
        return True
    return any(negated and ("*" in raw or raw.startswith(directory + "/")) for negated, raw, _ in rules)


def build_context(root: Path, destination: Path) -> list[str]:
    """Copy what `docker build root` would send into `destination`; returns the relative paths sent."""
    rules = ignore_rules(root / ".dockerignore")
    sent = []
    for directory, subdirectories, files in os.walk(root):
        base = Path(directory).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        subdirectories[:] = [
            name for name in subdirectories if name != ".git" and _may_hold_sent_files(prefix + name, rules)
        ]
        for name in files:
            relative = prefix + name
            if is_sent(relative, rules):
                target = destination / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(directory) / name, target)
                sent.append(relative)
    return sorted(sent)
