"""Raw datasets -> normalized examples, and teacher-output parsing.

    specs            DatasetSpec per dataset (answer style, label space, metric)
    readers          split files of each raw record shape -> {id, input, label}
    splits           the derived valid split (reference: 10% of train, seed 0), train fractions
    teacher_outputs  <split>.teacher.jsonl or llm/<split>_CoT_<i>.json, aligned with a split
    parsing          teacher completion -> (rationale, label), label normalization
    equations        the safe arithmetic evaluator behind SVAMP scoring
    datasets         the front door: get_spec, load_examples, available_datasets
    stats            `distill data stats`
    tfds_builder     `distill data build` (TFDS), download: `distill data download`

Submodules are imported on use; nothing here imports TensorFlow except
tfds_builder.
"""
