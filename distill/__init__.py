"""Distilling Step-by-Step in JAX/Flax.

Data flows one way; each module has one job:

    data/               raw dataset files -> normalized examples; teacher-output parsing
    teacher/            prompting a teacher LLM into cached rationales (before everything else)
    vocab               SentencePiece vocabularies (load, train from a dataset)
    tasks               SeqIO label / rationale tasks and mixtures (`register_tasks`)
    registered_tasks    importing it registers every dataset of $DISTILL_DATA_DIR (for T5X)
    feature_converters  task examples -> the training batch (packing, per-token task ids)
    input_pipeline      the resumable numpy batch stream; evaluation examples
    models/             the Flax T5 network, StudentModel, Hugging Face import/export
    losses              the step-by-step loss (one definition of the task ids)
    optimizers          AdamW / Adafactor and schedules
    partitioning        mesh + logical-axis rules -> NamedSharding; the one jit of the steps
    trainer             pure train_step / eval_step and the Trainer that compiles them
    checkpointing       orbax checkpoints of the train state; preemption
    decoding            greedy, sampling, beam search over a `tokens_to_logits` callable
    argmax              argmax over the last axis as two vectorized reductions (decoding, losses)
    predict             the compiled decoders, text in / text out, `distill predict`
    metrics             accuracy and SVAMP's equation accuracy
    evaluation          decode + score the label task, predictions and metrics files, the selected step
    bootstrap           intervals and paired tests from per-example correctness
    run_dir             the model-dir layout (run.json, metrics.json, ...) and `load_trained`
    metric_writer       TensorBoard scalars and the progress line
    flops               encoder-decoder FLOPs per step (MFU)
    atomic, jsonl       the one atomic writer and the one JSON-lines reader/writer
    safe_paths          untrusted names (archive members) joined under a folder, never outside it
    errors              UserError: one line naming the thing and the fix
    train, eval, infer  gin entry points (T5X style); gin_bindings, gin_paths: their gin side
    sweep, report       grids of runs -> results.csv -> tables and plots
    serve/              `distill serve`: the student behind an OpenAI-compatible API
    t5x_model           a model and trainer for upstream t5x.train with the paper's loss (imports t5x lazily)
    quickstart          the whole pipeline on SVAMP with a tiny T5 on CPU
    cli                 the `distill` command: a table of subcommands

Importing the package is cheap on purpose: subpackages pull in jax, seqio or
TensorFlow only when they are imported themselves.
"""

__version__ = "0.1.0"
