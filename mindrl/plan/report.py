"""The plan as text: one table per phase for each chosen rank, one verdict line per phase.

May import: mindrl.plan.
"""
from __future__ import annotations

from mindrl.plan.phases import JobPlan, Phase, gib


def _verdict(p: Phase) -> str:
    if p.capacity is None:
        return f"peak {gib(p.peak)} (no device given: --device NAME or --device-gb N)"
    word = "fits" if p.fits else "DOES NOT FIT"
    line = f"peak {gib(p.peak)} of {gib(p.capacity)}: {word}, headroom {gib(p.headroom)}"
    return line + (f"; {p.problem}" if p.problem else "")


def render(plan: JobPlan) -> str:
    lay = plan.layout
    ro = lay["rollout"]
    out = [f"plan of {plan.recipe}: {plan.world} ranks, TP{lay['tp']} PP{lay['pp']} EP{lay['ep']}"
           f"{' VPP' + str(lay['vpp_chunks']) if lay['vpp_chunks'] > 1 else ''} DP{lay['dp']}; micro-batch "
           f"{lay['micro_batch'][0]} x {lay['micro_batch'][1]} tokens, {lay['micro_batches_per_update']} per update; "
           f"rollout {ro['engine']} TP{ro['tp']} EP{ro['ep']}{' (shares the actor weights)' if ro['shared'] else ''}; "
           f"device: {plan.device or 'not given'}"]
    for w in plan.warnings:
        out.append(f"warning: {w}")
    for r in plan.ranks:
        out.append("")
        out.append(f"== {r.label}: {r.params / 1e9:.3f} B parameters")
        for p in r.phases:
            out.append(f"  -- {p.name}")
            for row in p.rows:
                mark = " " if row.in_peak else "*"
                note = f"   ({row.note})" if row.note else ""
                out.append(f"   {mark} {row.name:<52} {gib(row.bytes):>12}{note}")
            out.append(f"     => {_verdict(p)}")
    out.append("")
    out.append(f"   * not part of the peak (inside another row, or on the host)")
    if plan.host_per_node:
        out.append(f"host memory per node ({plan.devices_per_node} devices):")
        for row in plan.host_per_node:
            out.append(f"     {row.name:<52} {gib(row.bytes):>12}")
        out.append(f"     => {gib(sum(r.bytes for r in plan.host_per_node))}")
    verdict = {True: "every phase fits", False: "does NOT fit", None: "no capacity given"}[plan.fits]
    out.append(f"{verdict}; planned in {plan.seconds:.1f} s")
    return "\n".join(out)
