"""GenEval-style evaluation, whatever finds the objects.

* `geneval`: GenEval's file formats and rules (metadata, detections -> verdict, results lines, summary);
* `evaluator`: the `Evaluator` interface (a detector plus those rules) and `EvalResult`;
* `registry`: `create_evaluator(name, **options)`, `list_evaluators()`, `@register_evaluator`;
* `evaluate`: `evaluate_output_dir(dir, evaluator)`, what `ttsvar evaluate` runs on a job's output.dir.

The shapes testbed registers its exact evaluator as `shapes` (`ttsvar.testbed.evaluator`); the registry
imports it on the first lookup, so nothing here imports the testbed.
"""
