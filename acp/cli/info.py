"""``acp info``: channel groups, widths and base cost of a config or model."""

from __future__ import annotations

import argparse


def register(commands) -> None:
    info = commands.add_parser("info", help="channel groups, widths and base cost of a config or model")
    info.add_argument("config_or_model", help="a search-space TOML file or a model name")
    info.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from acp.cli.common import print_table
    from acp.workflows.problem import load_problem, resolve_settings

    problem = load_problem(resolve_settings(args.config_or_model))
    space = problem.space
    print(
        f"model {problem.identity.name}  input {'x'.join(map(str, problem.identity.input_size))}  "
        f"weights {problem.weights or '(random init)'}"
    )
    print(
        f"base: {space.base_macs:,} MACs (= 'FLOPs' as pruning papers count them), "
        f"{space.base_params:,} params"
    )
    print(
        f"{len(space.groups)} searchable channel groups (round_to={space.settings['round_to']}, "
        f"min_keep={space.settings['min_keep']}):"
    )
    rows = [("group", "width", "min", "MACs at stake", "members")]
    full = space.full_widths()
    for index, group in enumerate(space.groups):
        lowest = full.copy()
        lowest[index] = group.min_width
        saved = space.base_macs - space.cost(lowest)[0]
        members = ", ".join(group.producers[:3]) + (
            f" +{len(group.producers) - 3}" if len(group.producers) > 3 else ""
        )
        rows.append(
            (
                group.id,
                str(group.full_width),
                str(group.min_width),
                f"{100 * saved / space.base_macs:.1f}%",
                members,
            )
        )
    print_table(rows)
    if space.fixed_groups:
        print(f"{len(space.fixed_groups)} groups kept at full width:")
        for fixed in space.fixed_groups:
            print(f"  {fixed.id} ({fixed.full_width}): {fixed.reason}")
    print("'MACs at stake' = share of the base MACs saved by shrinking only that group to its minimum width")
    return 0
