"""What pytest-lrp adds to a zennit rule: its analysis against zennit run directly, same module, same inputs.

    python bench/torch_speed.py                  # VGG16 and ResNet50, 224x224, CPU, 2 samples, 3 rounds
    python bench/torch_speed.py --update         # also write bench/last_run_torch_speed.json

Direct is what a zennit user writes: the composite's context, one forward pass, one backward pass from the
explained output. pytest-lrp's analysis is pytest_lrp.pytorch.analysis.analyze for a rule with the
conservation check only (no reruns): the forward pass for the outputs, the same attribution, and the hooks
that record the relevance at every module. The numpy reference (the leak accounting, and the `reference` check
where a rule asks for it) runs inside the analysis, on the CPU in float64: its time is measured apart
(ReferenceComparison.seconds) and reported beside the ratio, not in it. Rounds alternate the two, so that load
on a shared machine hits both; the ratio is of the medians.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

from common import RESULTS, ROOT

LAST_RUN = ROOT / "bench" / "last_run_torch_speed.json"
NETWORKS = {"vgg16": "VGGCanonizer", "resnet50": "ResNetCanonizer"}


def direct(module, x, canonizer: str):
    import torch
    from zennit import canonizers, composites, torchvision

    cls = getattr(torchvision, canonizer, None) or getattr(canonizers, canonizer)
    composite = composites.EpsilonPlusFlat(zero_params=["bias"], canonizers=[cls()])
    from pytest_lrp.pytorch.upstream_fixes import batch_norm_merge_with_positive_eps

    inputs = x.clone().requires_grad_(True)
    with batch_norm_merge_with_positive_eps(), composite.context(module) as modified:
        out = modified(inputs)
        index = out.argmax(1)
        start = torch.zeros_like(out)
        start[torch.arange(len(x)), index] = out[torch.arange(len(x)), index].detach()
        (heat,) = torch.autograd.grad(out, inputs, start)
    return heat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--update", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu (the recorded figures) or cuda")
    args = parser.parse_args()
    import numpy as np
    import torch
    import torchvision.models as models

    from pytest_lrp.config.model_spec import PythonModel
    from pytest_lrp.config.rulefile import Rule
    from pytest_lrp.pytorch.analysis import analyze
    from pytest_lrp.pytorch.loading import TorchModel

    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = {}
    for name, canonizer in NETWORKS.items():
        torch.manual_seed(0)
        module = getattr(models, name)(weights=None).eval().to(args.device)
        for parameter in module.parameters():
            parameter.requires_grad_(False)
        model = TorchModel(path=PythonModel("torchvision.models", name), name=name, module=module, device=args.device)
        model.pristine = {k: v.clone() for k, v in module.state_dict().items()}
        x = np.random.default_rng(0).random((args.samples, 3, args.size, args.size), dtype=np.float32)
        rule = Rule(
            id="epsilon-plus-flat",
            analyzer="zennit.epsilon_plus_flat",
            params={"zero_params": ["bias"], "canonizers": [canonizer]},
            checks=("conservation",),
        )
        timings: dict = {"direct": [], "pytest-lrp": [], "reference": []}
        for _ in range(args.rounds):
            started = time.perf_counter()
            heat = direct(module, torch.tensor(x, device=args.device), canonizer)
            if args.device != "cpu":
                torch.cuda.synchronize()
            timings["direct"].append(time.perf_counter() - started)
            started = time.perf_counter()
            analysis = analyze(model, rule, x)
            total = time.perf_counter() - started
            # the numpy reference runs inside the analysis (leak accounting); its share is reported apart
            reference = analysis.reference.seconds if analysis.reference is not None else 0.0
            timings["pytest-lrp"].append(total - reference)
            timings["reference"].append(reference)
        same = bool(np.allclose(analysis.heatmaps, heat.cpu().numpy(), rtol=1e-4, atol=1e-6))
        medians = {k: statistics.median(v) for k, v in timings.items()}
        results[name] = {
            "seconds": {k: [round(t, 2) for t in v] for k, v in timings.items()},
            "median_seconds": {k: round(v, 2) for k, v in medians.items()},
            "ratio": round(medians["pytest-lrp"] / medians["direct"], 3),
            "reference_ratio": round(medians["reference"] / medians["direct"], 3),
            "same_heatmaps": same,
            "layers": len(analysis.layers),
            "reference_skipped": analysis.reference.skipped if analysis.reference is not None else "no reference",
        }
        print(
            f"{name}: direct {medians['direct']:.2f} s, pytest-lrp {medians['pytest-lrp']:.2f} s "
            f"(ratio {results[name]['ratio']:.2f}), numpy reference {medians['reference']:.2f} s "
            f"({results[name]['reference_ratio']:.1f} x direct), same heatmaps {same}",
            flush=True,
        )
    document = {
        "networks": results,
        "samples": args.samples,
        "size": args.size,
        "rounds": args.rounds,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
    }
    document["device"] = args.device
    if args.device != "cpu":
        print(json.dumps(document, indent=2))
        return
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "torch_speed.json").write_text(json.dumps(document, indent=2))
    if args.update:
        LAST_RUN.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
