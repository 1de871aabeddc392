#!/usr/bin/env python3
"""sora-finetune as a reliability engineer runs it (issue 19, "Nothing lost, nothing hung"):
diverging flags, a second run on the same folder, special files as inputs, a small file-size
limit, a run that prunes every rank, bad flags and paths, a killed run's leftovers. Each probe
asserts the program's clear error (or its success) and that an earlier run's outputs are
byte-identical afterwards. Python's standard library only.

usage: finetune_robust.py SORA_FINETUNE WORK_DIR PROBE [MODEL_DIR]"""

import fcntl
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

TINY = ["--plain", "--seeds", "1", "--train-size", "96", "--val-size", "48", "--test-size", "48",
        "--width", "16", "--layers", "2", "--heads", "2", "--pretrain-steps", "10",
        "--pretrain-batch", "4", "--corpus-tokens", "4000", "--epochs", "2", "--batch-size", "16"]
LOCK = ".sora-finetune.lock"

PROGRAM = ""
WORK = ""
MODEL = ""  # a Hugging Face folder, for the --model probes


def fail(message):
    print("FAIL: " + message)
    sys.exit(1)


def run(args, timeout=120, **kwargs):
    """Runs the program; a hang is a failure, not a stuck test."""
    try:
        p = subprocess.run([PROGRAM] + args, capture_output=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        fail("sora-finetune %s hung (no exit in %d s)" % (" ".join(map(str, args)), timeout))
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def expect_error(args, needle, code=None, timeout=120, **kwargs):
    rc, out, err = run(args, timeout=timeout, **kwargs)
    if rc == 0:
        fail("%s: exit 0, expected an error containing %r\n%s" % (args, needle, out))
    if code is not None and rc != code:
        fail("%s: exit %d, expected %d\n%s" % (args, rc, code, err))
    if needle not in err:
        fail("%s: the error lacks %r:\n%s" % (args, needle, err))
    return err


def snapshot(folder):
    """Every file under folder (lock files aside: they hold the last owner's PID) -> digest."""
    files = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if name == LOCK:
                continue
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return files


def fresh(name):
    path = os.path.join(WORK, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def good_run(out, *extra):
    rc, stdout, err = run(TINY + ["--method", "lora", "--out", out] + list(extra))
    if rc != 0:
        fail("the reference run failed: %s" % err)
    return snapshot(out)


def same(before, folder, what):
    after = snapshot(folder)
    if after != before:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        fail("%s changed %s" % (what, changed))


def temporaries(folder):
    found = []
    for root, dirs, names in os.walk(folder):
        found += [n for n in dirs + names
                  if n.startswith(".") and (".tmp." in n or ".old." in n)]
    return found


# ---- probes --------------------------------------------------------------------------------


def probe_diverged():
    """--lr 1e3, --pretrain-lr 1e3: an error naming the flag; nothing written, nothing cached."""
    out = fresh("diverged")
    before = good_run(out)
    expect_error(TINY + ["--method", "lora", "--out", out, "--lr", "1e3"],
                 "diverged with --lr 1000")
    same(before, out, "--lr 1e3")
    expect_error(TINY + ["--method", "full", "--out", out, "--full-lr", "1e3"],
                 "diverged with --full-lr 1000")
    same(before, out, "--full-lr 1e3")
    args = TINY + ["--method", "lora", "--out", out, "--pretrain-lr", "1e3"]
    args[args.index("--pretrain-steps") + 1] = "30"
    expect_error(args, "pretraining diverged with --pretrain-lr 1000")
    same(before, out, "--pretrain-lr 1e3")  # the cache folder is inside: nothing was cached
    expect_error(TINY + ["--method", "lora", "--out", out, "--alpha", "1e38"], "--alpha")
    expect_error(TINY + ["--method", "lora", "--out", out, "--alpha", "inf"], "--alpha")
    same(before, out, "--alpha 1e38")


def probe_lock():
    """A folder in use by another run: an error at once naming its PID; nothing touched."""
    out = fresh("lock")
    before = good_run(out)
    for folder, what in ((out, "output folder"), (os.path.join(out, "cache"), "cache folder")):
        with open(os.path.join(folder, LOCK), "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            f.truncate(0)
            f.write("%d\n" % os.getpid())
            f.flush()
            start = time.monotonic()
            expect_error(TINY + ["--method", "lora", "--out", out], "in use by PID %d" % os.getpid())
            if time.monotonic() - start > 10:
                fail("the second run did not fail at once")
            if what not in expect_error(TINY + ["--out", out], "in use by PID"):
                fail("the error does not name the %s" % what)
        same(before, out, "a run on a locked " + what)
    # Two runs started together: exactly one proceeds, the other fails naming the first.
    out2 = fresh("lock-two")
    procs = [subprocess.Popen([PROGRAM] + TINY + ["--method", "lora", "--out", out2],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read().decode()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    # Either one ran while the other was refused, or (rarely) they did not overlap at all.
    if codes != [0, 1] and codes != [0, 0]:
        fail("two runs at once: exit codes %s: %s" % (codes, results))
    if codes == [0, 1] and not any("in use by PID" in e for _, e in results):
        fail("the refused run does not say why: %s" % results)


def probe_special_inputs():
    """A FIFO, /dev/zero or a directory as an input: a named error at once, never a hang."""
    glue = fresh("special")
    with open(os.path.join(glue, "dev.tsv"), "w") as f:
        f.write("sentence\tlabel\nfine\t1\n")
    train = os.path.join(glue, "train.tsv")
    base = TINY + ["--task", "sst2", "--glue-dir", glue, "--out", os.path.join(glue, "out")]
    os.mkfifo(train)
    expect_error(base, "a FIFO", timeout=30)
    os.remove(train)
    os.symlink("/dev/zero", train)
    expect_error(base, "a character device", timeout=30)
    os.remove(train)
    os.mkdir(train)
    expect_error(base, "a directory", timeout=30)
    os.rmdir(train)
    with open(train, "w") as f:
        f.write("sentence\tlabel\ngood\t1\nbad\t0\n")
    # A NUL in a label: the error shows it escaped rather than ending the message there.
    with open(train, "w") as f:
        f.write("sentence\tlabel\ngood\t1\x00x\n")
    err = expect_error(base, "\\x00x", timeout=30)
    if "\x00" in err:
        fail("a raw NUL in the message: %r" % err)
    with open(train, "w") as f:
        f.write("sentence\tlabel\ngood\t1\nbad\t0\n")
    fifo = os.path.join(glue, "corpus.fifo")
    os.mkfifo(fifo)
    expect_error(base + ["--pretrain-text", fifo], "a FIFO", timeout=30)


def probe_file_size_limit():
    """ulimit -f: the write fails with a message (not SIGXFSZ), no temporary is left."""
    out = fresh("fsize")

    def small_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))

    err = expect_error(TINY + ["--method", "lora", "--out", out], "cannot write", code=1,
                       preexec_fn=small_limit)
    if "too large" not in err.lower():
        fail("the error does not say the file is too large: %s" % err)
    left = temporaries(out)
    if left:
        fail("temporaries left behind: %s" % left)


def probe_all_pruned():
    """--xi 1e3 prunes every rank: no adapter (PEFT could not load it), the summary says why."""
    out = fresh("pruned")
    rc, stdout, err = run(TINY + ["--method", "sora", "--xi", "1e3", "--out", out])
    if rc != 0:
        fail("--xi 1e3 failed: %s" % err)
    if os.path.exists(os.path.join(out, "adapter")):
        fail("an adapter was written although every rank was pruned")
    summary = json.load(open(os.path.join(out, "summary.json")))
    reason = summary["runs"][0].get("adapter_not_exported", "")
    if "every rank was pruned" not in reason:
        fail("the summary does not say why there is no adapter: %r" % summary["runs"][0])
    if os.path.exists(os.path.join(out, "INCOMPLETE")):
        fail("a finished run left its INCOMPLETE marker")


def probe_leftovers():
    """A killed run's temporaries are removed by the next run; a finished run's files agree."""
    out = fresh("leftovers")
    good_run(out)
    os.makedirs(os.path.join(out, ".adapter.tmp.AbC123"))
    open(os.path.join(out, ".summary.json.tmp.x1Y2z3"), "w").close()
    open(os.path.join(out, "cache", ".pretrained-0.safetensors.tmp.q9W8e7"), "w").close()
    open(os.path.join(out, "notes.tmp.txt"), "w").close()  # not ours: kept
    good_run(out)
    if temporaries(out) != []:
        fail("stale temporaries kept: %s" % temporaries(out))
    if not os.path.exists(os.path.join(out, "notes.tmp.txt")):
        fail("a file that is not a temporary of sora-finetune was removed")
    summary = json.load(open(os.path.join(out, "summary.json")))
    with open(os.path.join(out, "adapter", "adapter_model.safetensors"), "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(n))["__metadata__"]
    if meta.get("sora.run_id") != summary.get("run_id") or not summary.get("run_id"):
        fail("the adapter's run id %r is not the summary's %r"
             % (meta.get("sora.run_id"), summary.get("run_id")))


def probe_sigterm():
    """SIGTERM mid-training: exit 143 with a message, no temporaries, earlier outputs kept."""
    out = fresh("sigterm")
    before = good_run(out)
    args = TINY + ["--method", "lora", "--out", out]
    # 12000 steps: a plain progress line every 1200 (the first says training has started,
    # the handlers are installed), and time left to stop the run before it ends.
    args[args.index("--epochs") + 1] = "2000"
    p = subprocess.Popen([PROGRAM] + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Wait for the first progress line (stderr): training has started, the handlers are in.
    seen = b""
    while b"lora seed" not in seen:
        line = p.stderr.readline()
        if not line:
            fail("the run ended before training: %s" % seen.decode())
        seen += line
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        fail("SIGTERM did not stop the run")
    err = (seen + p.stderr.read()).decode()
    if rc != 128 + signal.SIGTERM or "SIGTERM" not in err or "--resume" not in err:
        fail("after SIGTERM: exit %d, %s" % (rc, err))
    if temporaries(out):
        fail("temporaries left behind: %s" % temporaries(out))
    # The stopped run wrote its checkpoint; everything else is as it was.
    if not os.path.isfile(os.path.join(out, "checkpoint", "state.json")):
        fail("SIGTERM wrote no checkpoint: %s" % sorted(os.listdir(out)))
    shutil.rmtree(os.path.join(out, "checkpoint"))
    same(before, out, "a run stopped by SIGTERM")


def interrupt_when_checkpointed(args, sig):
    """Starts the program, sends `sig` once its first checkpoint exists; returns (rc, stderr)."""
    out = args[args.index("--out") + 1]
    state = os.path.join(out, "checkpoint", "state.json")
    p = subprocess.Popen([PROGRAM] + args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not os.path.exists(state):
        if p.poll() is not None:
            fail("the run ended before its first checkpoint: %s" % p.stderr.read().decode())
        if time.time() > deadline:
            p.kill()
            fail("no checkpoint after 120 s")
        time.sleep(0.02)
    p.send_signal(sig)
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        fail("the signal did not stop the run")
    return p.returncode, p.stderr.read().decode()


def results(out):
    """What a run computed (timings and ids aside): the runs' numbers, metrics.csv, adapters."""
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    keys = ["method", "seed", "metric", "best_validation", "steps", "epochs", "nonzero_params",
            "params_after_pruning", "ranks", "eval_steps", "eval_metrics", "eval_losses"]
    runs = [{k: r[k] for k in keys} for r in summary["runs"]]
    with open(os.path.join(out, "metrics.csv")) as f:
        csv = f.read()
    adapters = {}
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name, "adapter_model.safetensors")
        if os.path.isfile(path):
            with open(path, "rb") as f:
                data = f.read()
            header = int.from_bytes(data[:8], "little")
            adapters[name] = hashlib.sha256(data[8 + header:]).hexdigest()  # the tensors' bytes
    return runs, csv, adapters


def resumed_equals_uninterrupted(name, args, twice):
    """Runs `args` through, then stopped by SIGINT at its first checkpoint and resumed (stopped
    and resumed again when `twice`): the results must be bit for bit the same."""
    reference = fresh(name + "-reference")
    rc, _, err = run(args + ["--out", reference])
    if rc != 0:
        fail("the uninterrupted run failed: %s" % err)
    out = fresh(name)
    run_args = args + ["--out", out, "--save-every", "7"]
    rc, err = interrupt_when_checkpointed(run_args, signal.SIGINT)
    if rc != 128 + signal.SIGINT or "--resume" not in err:
        fail("SIGINT: exit %d, %s" % (rc, err))
    checkpoint = os.path.join(out, "checkpoint")
    with open(os.path.join(checkpoint, "state.json")) as f:
        state = json.load(f)
    if state["current"] is None or state["current"]["step"] == 0:
        fail("the checkpoint holds no run in progress: %s" % state["current"])
    # Other flags: refused before any work, naming the flag; the checkpoint is untouched.
    before = snapshot(checkpoint)
    expect_error(run_args + ["--weight-decay", "0.5", "--resume", checkpoint],
                 "--weight-decay: checkpoint", code=1)
    same(before, checkpoint, "a refused --resume")
    if twice:
        # Resume from a copy, stop again at a later checkpoint.
        first = os.path.join(WORK, name + "-first-checkpoint")
        shutil.rmtree(first, ignore_errors=True)
        shutil.move(checkpoint, first)
        rc, err = interrupt_when_checkpointed(run_args + ["--resume", first], signal.SIGINT)
        if rc != 128 + signal.SIGINT:
            fail("the second SIGINT: exit %d, %s" % (rc, err))
        with open(os.path.join(checkpoint, "state.json")) as f:
            second = json.load(f)
        progress = lambda st: (len(st["finished"]), st["current"]["step"] if st["current"] else 0)
        if progress(second) <= progress(state):
            fail("the resumed run's checkpoint is not past the first: %s vs %s"
                 % (progress(second), progress(state)))
    rc, _, err = run(run_args + ["--resume", checkpoint])
    if rc != 0:
        fail("the resumed run failed: %s" % err)
    if os.path.exists(checkpoint):
        fail("a finished run left its checkpoint behind")
    want, got = results(reference), results(out)
    for what, a, b in zip(("runs", "metrics.csv", "adapters"), want, got):
        if a != b:
            fail("%s: resumed %s differ from the uninterrupted run's:\n%s\n%s"
                 % (name, what, a, b))


def probe_resume():
    """--save-every / SIGINT / --resume: a run stopped mid-training and resumed computes bit for
    bit what the uninterrupted run computes: the whole comparison (stopped twice), and SoRA and
    AdaLoRA stopped inside their own run (gates and rank masks mid-way); --resume refuses other
    flags, naming them."""
    args = TINY + ["--eval-every", "5"]
    args[args.index("--epochs") + 1] = "30"
    resumed_equals_uninterrupted("resume-compare", args + ["--compare"], twice=True)
    for method in ("sora", "adalora"):
        resumed_equals_uninterrupted("resume-" + method, args + ["--method", method], twice=False)


def probe_resume_model():
    """The same with a pre-trained folder (--model, argument 4) and --grad-accum 2."""
    args = ["--model", MODEL, "--compare", "--plain", "--seeds", "1", "--train-size", "96",
            "--val-size", "48", "--test-size", "48", "--epochs", "12", "--batch-size", "8",
            "--grad-accum", "2", "--eval-every", "5", "--max-length", "32", "--lr", "0.05",
            "--full-lr", "0.01"]
    resumed_equals_uninterrupted("resume-model", args, twice=False)


def probe_grad_checkpoint_model():
    """--grad-checkpoint with a pre-trained folder (argument 4), every method, the model's
    dropout on, on an fp32 and a bf16 frozen base: the same numbers, metrics.csv and adapter
    bytes as the plain run (the recompute draws the first forward's masks)."""
    args = ["--model", MODEL, "--compare", "--plain", "--seeds", "1", "--train-size", "64",
            "--val-size", "32", "--test-size", "32", "--epochs", "3", "--batch-size", "8",
            "--max-length", "32", "--lr", "0.05", "--full-lr", "0.01"]
    # Also on a bf16 frozen base, whose weights the recompute widens again.
    for base in ("fp32", "bf16"):
        plain = fresh("grad-checkpoint-plain-" + base)
        checkpointed = fresh("grad-checkpoint-" + base)
        for out, extra in ((plain, []), (checkpointed, ["--grad-checkpoint"])):
            rc, _, err = run(args + extra + ["--frozen-base", base, "--out", out], timeout=300)
            if rc != 0:
                fail("--grad-checkpoint probe (%s base): a run failed: %s" % (base, err))
        want, got = results(plain), results(checkpointed)
        for what, a, b in zip(("runs", "metrics.csv", "adapters"), want, got):
            if a != b:
                fail("--grad-checkpoint, %s base: %s differ from the plain run's:\n%s\n%s"
                     % (base, what, a, b))
        if not want[2]:
            fail("--grad-checkpoint probe: the runs exported no adapter to compare")


def probe_bad_flags_and_paths():
    """Flags and paths that cannot work fail before any work, naming the flag."""
    out = fresh("flags")
    before = good_run(out)
    for args, needle in (
        (["--sparsity-schedule", "--xi-max", "nan"], "'nan' is not a finite number"),
        (["--lr", "nan"], "'nan' is not a finite number"),
        (["--xi", "inf"], "'inf' is not a finite number"),
        (["--targets", "q,qq"], "--targets: 'qq' matches no module"),
        (["--rank", "32"], "--rank 32 exceeds --width 16"),
    ):
        err = expect_error(TINY + ["--out", out] + args, needle)
        if args[-2] not in err or len(err) > 400:
            fail("the error does not name %s in a short message: %s" % (args[-2], err))
    same(before, out, "bad flags")
    bad = os.path.join(WORK, "flags-\udcff").encode("utf-8", "surrogateescape")
    expect_error([a.encode() for a in TINY] + [b"--out", bad], "not valid UTF-8")
    if os.path.exists(bad):
        fail("a folder was made for the non-UTF-8 --out")
    expect_error(TINY + ["--out", "/proc/sora-finetune-out"], "--out: cannot create the folder")
    expect_error(TINY + ["--out", os.path.join(out, "summary.json")], "--out: ")
    # A cache whose metadata is broken is retrained with a warning, not a crash.
    cache = [f for f in os.listdir(os.path.join(out, "cache")) if f.endswith(".safetensors")][0]
    with open(os.path.join(out, "cache", cache), "r+b") as f:
        f.seek(16)
        f.write(b"\x00\x00\x00\x00")
    rc, stdout, err = run(TINY + ["--method", "lora", "--out", out])
    if rc != 0 or "warning: ignoring the unusable cache" not in stdout:
        fail("a broken cache was not retrained: %d %s %s" % (rc, stdout, err))
    # A damaged tensor (its last byte flipped) fails the checksum: retrained too.
    with open(os.path.join(out, "cache", cache), "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0x55]))
    rc, stdout, err = run(TINY + ["--method", "lora", "--out", out])
    if rc != 0 or "the file is damaged" not in stdout:
        fail("a damaged cache was not retrained: %d %s %s" % (rc, stdout, err))
    rc, stdout, err = run(TINY + ["--method", "lora", "--out", out])
    if rc != 0 or "reusing the cached" not in stdout:
        fail("the retrained cache is not reused: %d %s %s" % (rc, stdout, err))


def probe_inspect():
    """sora-inspect flags what PEFT would refuse, and never hangs on a FIFO."""
    inspect = os.path.join(os.path.dirname(PROGRAM), "sora-inspect")
    out = fresh("inspect")
    good_run(out)
    adapter = os.path.join(out, "adapter")
    config_path = os.path.join(adapter, "adapter_config.json")
    good = json.load(open(config_path))

    def inspect_with(config):
        with open(config_path, "w") as f:
            json.dump(config, f)
        try:
            p = subprocess.run([inspect, "--no-stats", adapter], capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:
            fail("sora-inspect hung")
        return p.returncode, p.stdout.decode() + p.stderr.decode()

    rc, text = inspect_with(good)
    if rc != 0:
        fail("sora-inspect rejects a good adapter: %s" % text)
    for change, needle in ((("r", "8"), "'r' must be a positive integer"),
                           (("r", ""), "'r' must be a positive integer"),
                           (("r", 2 ** 70), "'r' must be a positive integer"),
                           (("target_modules", []), "target_modules is empty"),
                           (("rank_pattern", {"blocks.0.attn.q": "4"}), "is not a rank")):
        config = dict(good)
        config[change[0]] = change[1]
        rc, text = inspect_with(config)
        if rc == 0 or needle not in text:
            fail("sora-inspect with %s=%r: exit %d, %s" % (change[0], change[1], rc, text))
    os.remove(config_path)
    os.mkfifo(config_path)
    fifo = os.path.join(out, "weights.fifo")
    os.mkfifo(fifo)
    for target in (adapter, fifo):
        try:
            p = subprocess.run([inspect, target], capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:
            fail("sora-inspect hung on a FIFO (%s)" % target)
        if p.returncode == 0 or b"a FIFO" not in p.stderr:
            fail("sora-inspect on a FIFO: exit %d, %s" % (p.returncode, p.stderr))


PROBES = {
    "diverged": probe_diverged,
    "lock": probe_lock,
    "special-inputs": probe_special_inputs,
    "file-size-limit": probe_file_size_limit,
    "all-pruned": probe_all_pruned,
    "leftovers": probe_leftovers,
    "sigterm": probe_sigterm,
    "resume": probe_resume,
    "resume-model": probe_resume_model,
    "grad-checkpoint-model": probe_grad_checkpoint_model,
    "bad-flags-and-paths": probe_bad_flags_and_paths,
    "inspect": probe_inspect,
}

if __name__ == "__main__":
    PROGRAM, WORK, name = sys.argv[1], sys.argv[2], sys.argv[3]
    MODEL = sys.argv[4] if len(sys.argv) > 4 else ""
    os.makedirs(WORK, exist_ok=True)
    PROBES[name]()
    print("OK: " + name)
