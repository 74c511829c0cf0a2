"""A recording or alerting rule as plain data, and the pieces every rule of one config is
written with (:class:`RuleWriter`): the config's selector, its grouping labels, and the
Go-template queries of the annotations."""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import MonitoringConfig
from .promql import by, on, select


@dataclass
class Rule:
    """One recording or alerting rule, with the comment lines written above it."""

    expr: str
    record: str = ""
    alert: str = ""
    comment: str = ""
    for_: str = ""
    severity: str = ""
    summary: str = ""
    description: str = ""
    dashboard: str = ""
    #: Labels of the alert passed to the dashboard as variables (``var-<label>``).
    dashboard_vars: tuple[str, ...] = ()
    #: Whether the alert carries the grouping labels (an objective series does not).
    grouped: bool = True
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class Group:
    name: str
    rules: list[Rule]


class RuleWriter:
    """The PromQL and template pieces every rule of one config is written with: the
    config's selector on each exported series, its grouping labels in each aggregation."""

    def __init__(self, config: MonitoringConfig) -> None:
        self.config = config
        self.matchers = [config.selector] if config.selector else []

    def series(self, expr: str) -> str:
        """``expr`` with the config's selector on every exported series."""
        return select(expr, self.matchers)

    def by(self, *labels: str) -> str:
        return by(self.config, *labels)

    def on(self, *labels: str) -> str:
        return on(self.config, *labels)

    def query(self, template: str, *labels: str, raw: bool = False) -> str:
        """A Go-template ``printf`` of ``template`` whose ``%s`` becomes matchers of the
        alert's own values of the grouping labels and ``labels`` (``raw``: the config's
        selector too, for an exported series), e.g. ``printf "m{job=%q,task=%q}"
        $labels.job $labels.task`` (the values again for each further ``%s``). Quotes in
        ``template`` are written ``\\"``."""
        keys = tuple(dict.fromkeys((*self.config.group_by, *labels)))
        matchers = [f"{k}=%q" for k in keys]
        if raw and self.config.selector:
            matchers.insert(0, self.config.selector.replace("%", "%%").replace('"', '\\"'))
        text = template.replace("%s", ",".join(matchers))
        return f'printf "{text}" ' + " ".join(f"$labels.{k}"
                                               for _ in range(template.count("%s"))
                                               for k in keys)

    def counted_at_all(self, counter: str, window: str, *labels: str) -> str:
        """``counter`` went up within ``window``, per ``labels``: its increase, or a series born
        within it (a labelled counter is born at its first increment, so its first sample is
        already 1 and ``increase()`` cannot see that step)."""
        return self.series(
            f"sum {self.by(*labels)} (\n"
            f"    increase({counter}[{window}]) > 0\n"
            "  or\n"
            "    (\n"
            f"      {counter}\n"
            f"      unless {counter} offset {window}\n"
            "    )\n"
            ") > 0")
