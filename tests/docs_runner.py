"""Run the examples of the documentation pages in one process: ``python docs_runner.py PLAN RESULTS``.

PLAN is a JSON list of pages, each ``{"page", "folder", "links", "steps": [...]}`` (``links``: names to
make in every step's folder, as symbolic links to their targets); a step is
``{"kind": "python" | "shell", "code", "folder", "cache"}``. Python steps run here, in page order,
each page in its own namespace (so MindSpore is imported once for all of them); shell steps run in
bash. Every step runs in its folder with ``CNNCTC_CACHE_DIR`` set to its cache. RESULTS gets, per
step, its stdout, stderr, exit status (1 for a Python exception, whose traceback is its stderr)
and wall time. tests/test_docs.py writes the plan and judges the results.
"""
import contextlib
import io
import json
import os
import subprocess
import sys
import time
import traceback


def run_python(code, name, namespace):
    out, err = io.StringIO(), io.StringIO()
    status = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            exec(compile(code, name, "exec"), namespace)
        except BaseException:  # an example that fails is a result, not the end of the run
            status = 1
            traceback.print_exc(file=err)
    return out.getvalue(), err.getvalue(), status


def run_shell(code, folder, timeout):
    try:
        run = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=folder, capture_output=True,
                             text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=os.environ.copy())
    except subprocess.TimeoutExpired as exc:
        return exc.stdout or "", (exc.stderr or "") + f"\n(timed out after {timeout} s)", 124
    return run.stdout, run.stderr, run.returncode


def main(plan_path, results_path, timeout=600):
    with open(plan_path, encoding="utf-8") as f:
        plan = json.load(f)
    results = []
    for page in plan:
        namespace = {"__name__": "__main__"}
        for number, step in enumerate(page["steps"]):
            os.makedirs(step["folder"], exist_ok=True)
            for link, target in page.get("links", {}).items():   # e.g. examples/ -> docs/examples
                path = os.path.join(step["folder"], link)
                if not os.path.lexists(path):
                    os.symlink(target, path)
            os.chdir(step["folder"])
            os.environ["CNNCTC_CACHE_DIR"] = step["cache"]
            started = time.monotonic()
            if step["kind"] == "python":
                out, err, status = run_python(step["code"], f"{page['page']} example {number + 1}", namespace)
            else:
                out, err, status = run_shell(step["code"], step["folder"], timeout)
            results.append({"page": page["page"], "step": number, "stdout": out, "stderr": err, "status": status,
                            "seconds": round(time.monotonic() - started, 2)})
            with open(results_path, "w", encoding="utf-8") as f:  # written as it goes: a hang still shows the rest
                json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
