"""``acp info``: channel groups, widths and base cost of a config or model."""

from __future__ import annotations

import argparse


def register(commands) -> None:
    info = commands.add_parser("info", help="channel groups, widths and base cost of a config or model")
    info.add_argument("config_or_model", help="a search-space TOML file or a model name")
    info.add_argument(
        "--latency",
        action="store_true",
        help="also show each group's share of the base latency (measures the [latency] table if it is not "
        "cached yet; without this flag a cached table is shown when there is one)",
    )
    info.add_argument(
        "--random-weights",
        action="store_true",
        help="do not read [model].weights (e.g. before they exist): the groups and costs do not depend on "
        "them. Without it a configured weights file that does not exist is an error; a bare model name "
        "needs no weights",
    )
    info.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from acp.cli.common import print_table
    from acp.models.detection import describe_network
    from acp.workflows.latency import cached_latency_model, group_shares, latency_model_for
    from acp.workflows.problem import load_problem, resolve_settings

    problem = load_problem(
        resolve_settings(args.config_or_model),
        random_weights=args.random_weights,
        random_weights_option="--random-weights",
    )
    space = problem.space
    latency = latency_model_for(problem, progress=True)[0] if args.latency else cached_latency_model(problem)
    latency_share = None if latency is None else {g: share for g, share, _ in group_shares(latency, space)}
    print(
        f"model {problem.identity.name}  input {'x'.join(map(str, problem.identity.input_size))}  "
        f"weights {problem.weights or '(random init)'}"
    )
    network = describe_network(problem.model, problem.identity.input_size)
    if network is not None:
        print(network)
    print(
        f"base: {space.base_macs:,} MACs (= 'FLOPs' as pruning papers count them), "
        f"{space.base_params:,} params"
    )
    print(
        f"{len(space.groups)} searchable channel groups (round_to={space.settings['round_to']}, "
        f"min_keep={space.settings['min_keep']}):"
    )
    header = ("group", "width", "min", "MACs at stake") + (() if latency is None else ("latency at stake",))
    rows = [(*header, "members")]
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
                *(() if latency_share is None else (f"{100 * latency_share[group.id]:.1f}%",)),
                members,
            )
        )
    print_table(rows)
    if space.fixed_groups:
        print(f"{len(space.fixed_groups)} groups kept at full width:")
        for fixed in space.fixed_groups:
            print(f"  {fixed.id} ({fixed.full_width}): {fixed.reason}")
    print("'MACs at stake' = share of the base MACs saved by shrinking only that group to its minimum width")
    if latency is None:
        print(f"(latency at stake: `acp info {args.config_or_model} --latency` or `acp latency` measures it)")
    else:
        key = latency.key
        print(
            f"'latency at stake' = the same for the predicted latency ({key['runtime']}, batch "
            f"{key['batch_size']}, {key['threads']} thread(s); base {latency.base_ms:.3g} ms)"
        )
    return 0
