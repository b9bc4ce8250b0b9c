"""Official accuracy of a folder of generated images (0.png ... n-1.png, in label-file order).

Usage:
    python evaluate_generated.py                       # every split found under generated/
    python evaluate_generated.py --split test          # generated/test against test.json
    python evaluate_generated.py --split new_test --judge checkpoint.pth
    python evaluate_generated.py --json my_labels.json --images out/mine
    python evaluate_generated.py --judge weights/judge.pth second_judge.pth   # a second opinion

The judge: --judge FILE when given, else ./checkpoint.pth (the
course's) when it exists, else the shipped weights/judge.pth (evaluator.default_judge). Prints
which judge scores (its path and sha256) above the scores, then per split the accuracy,
hits/total and a breakdown by object count, and writes <images>/eval.json, which names the
judge too ("judge": {"path", "sha256"}). Further --judge files are second opinions: their scores
are printed under the first judge's, kept in eval.json under "other_judges", and set beside it in
a table with their spread (a score that moves with the judge says as much about the judge).
The accuracy is the course's: total hits over total labels of the whole split at once (see
evaluator.py). Images of another size are resized to 64x64 first, and the script says so.
"""
import json
from pathlib import Path

import torch
from PIL import Image

from dataset import encode_labels, load_label_file, load_numbered_images, load_objects, to_model_range
from evaluator import evaluation_model, official_hits
from utils import SPLITS, ArgumentParser, ICLEVRError, atomic_write, exit_on_user_error


def find_splits(root, objects):
    """(json, folder) for each folder under `root` that holds 0.png and has a <name>.json beside us."""
    found = []
    for folder in sorted(Path(root).iterdir()) if Path(root).is_dir() else []:
        if (folder / "0.png").is_file():
            if Path(f"{folder.name}.json").is_file():
                found.append((Path(f"{folder.name}.json"), folder))
            else:
                print(f"skipping {folder}: no {folder.name}.json here (score it with --json FILE --images {folder})")
    if not found:
        raise ICLEVRError(f"no generated images under {root}/ (make them with: python generate.py --split test), "
                          "or name a folder with --images")
    return found


def list_labels(json_path, label2idx):
    """The label lists of a test.json-style file; a train.json-style dict is refused in one line."""
    names, label_lists = load_label_file(json_path, label2idx)
    if names is not None:
        raise ICLEVRError(f"{json_path} is a train.json-style dict; generated splits use list files like test.json")
    return label_lists


def score(judge, json_path, folder, label2idx, others=()):
    """Evaluate one folder against one list-style label file (and with each of `others`, second opinions);
    returns the eval.json record."""
    label_lists = list_labels(json_path, label2idx)
    folder = Path(folder)
    how = f"generate them with: python generate.py --json {json_path} --out {folder}"
    try:
        size = Image.open(folder / "0.png").size
    except OSError:
        size = (64, 64)  # load_numbered_images names the missing or unreadable file
    images = load_numbered_images(folder, len(label_lists), size=64, how_to_fix=how)
    note = f" (images are {size[0]}x{size[1]}: resized to 64x64 for the evaluator)" if size != (64, 64) else ""
    multi_hot = torch.stack([encode_labels(labels, label2idx) for labels in label_lists])
    x = to_model_range(images)  # converted once, for every judge
    scores = judge.predict(x)
    hits, total = official_hits(scores, multi_hot)
    idx2label = {i: label for label, i in label2idx.items()}
    by_objects = {}
    for k in sorted({len(x) for x in label_lists}):
        rows = multi_hot.sum(1) == k
        h, t = official_hits(scores[rows], multi_hot[rows])
        by_objects[str(k)] = {"hits": h, "total": t, "accuracy": h / t}
    per_image = [{"labels": labels, "predicted": [idx2label[int(j)] for j in s.topk(len(labels)).indices],
                  "hits": official_hits(s[None], m[None])[0]}
                 for labels, s, m in zip(label_lists, scores, multi_hot)]
    record = {"accuracy": hits / total, "hits": hits, "total": total, "json": str(json_path),
              "images": str(folder), "judge": {"path": str(judge.checkpoint), "sha256": judge.sha256},
              "by_objects": by_objects, "per_image": per_image}
    breakdown = ", ".join(f"{k} object{'s' * (k != '1')} {v['hits']}/{v['total']}" for k, v in by_objects.items())
    print(f"{Path(json_path).stem}: accuracy {hits / total:.4f} ({hits}/{total} labels; {breakdown}) "
          f"[{folder}]{note}")
    record["other_judges"] = []
    for other in others:
        h, _ = official_hits(other.predict(x), multi_hot)
        record["other_judges"].append({"path": str(other.checkpoint), "sha256": other.sha256, "accuracy": h / total,
                                       "hits": h})
        print(f"  second opinion {other.name()}: accuracy {h / total:.4f} ({h}/{total} labels)")
    atomic_write(folder / "eval.json", lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
    return record


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--split", choices=SPLITS, help="Score generated/<split> against <split>.json.")
    p.add_argument("--json", help="Label file (test.json style) the images were generated from.")
    p.add_argument("--images", help="Folder of 0.png ... n-1.png (default: generated/<split or json stem>).")
    p.add_argument("--judge", nargs="+", metavar="FILE",
                   help="Judge checkpoint (course format; default: ./checkpoint.pth when it exists, else the "
                   "shipped weights/judge.pth); further files score as second opinions beside it.")
    p.add_argument("--objects", default="objects.json", help="The 24 labels and their indices.")
    p.add_argument("--generated-root", nargs="+", default=["generated"],
                   help="Where to look for splits when none is named (default generated); with several folders, "
                   "a table sets their scores side by side.")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N].")
    return p


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    label2idx = load_objects(args.objects)
    if args.split or args.json:
        json_path = Path(args.json or f"{args.split}.json")
        root = args.generated_root[0]
        jobs = [(json_path, Path(args.images or Path(root) / (args.split or json_path.stem)))]
    elif args.images:
        raise ICLEVRError("--images needs --split or --json to say which labels the images were made from")
    else:
        jobs = [job for root in args.generated_root for job in find_splits(root, args.objects)]
    judge, *others = [evaluation_model(path, device=args.device) for path in args.judge or [None]]
    print(f"judge: {judge.name()}" + "".join(f"\nsecond opinion: {other.name()}" for other in others))
    records = [score(judge, json_path, folder, label2idx, others) for json_path, folder in jobs]
    if others:
        print_judges(records)
    elif len(args.generated_root) > 1 and not (args.split or args.json):
        print_table(records, args.generated_root)
    return records


def print_table(records, roots):
    """The accuracy of each split (rows) in each root folder (columns)."""
    acc = {(Path(r["images"]).parent, Path(r["json"]).stem): r["accuracy"] for r in records}
    splits = list(dict.fromkeys(split for _, split in acc))
    width = max(10, *(len(str(root)) for root in roots))
    print("split".ljust(10) + "".join(str(root).rjust(width + 2) for root in roots))
    for split in splits:
        cells = [acc.get((Path(root), split)) for root in roots]
        print(split.ljust(10) + "".join(("-" if a is None else f"{a:.4f}").rjust(width + 2) for a in cells))


def print_judges(records):
    """Each folder's accuracy by each judge (columns), and the spread between them in labels per 100."""
    judges = [records[0]["judge"], *records[0]["other_judges"]]
    print("| images | " + " | ".join(f"{Path(j['path']).name} ({j['sha256'][:8]})" for j in judges)
          + " | spread |\n|---|" + "---|" * (len(judges) + 1))
    for r in records:
        accs = [r["accuracy"], *(o["accuracy"] for o in r["other_judges"])]
        cells = " | ".join(f"{a:.4f}" for a in accs)
        print(f"| {r['images']} | {cells} | {100 * (max(accs) - min(accs)):.1f} |")


if __name__ == "__main__":
    main()
