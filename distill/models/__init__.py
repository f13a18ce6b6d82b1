"""The student model.

    t5              the Flax T5 network (pure module, frozen T5Config, T5X logical axis names)
    layers          its layers: dense, attention with relative position bias, RMSNorm, dropout
    student         StudentModel: loss_fn, predict_batch, score_batch (T5X's model-object role)
    hf_checkpoints  Hugging Face T5 folders (safetensors / PyTorch) -> params, and back
    t5x_checkpoints T5X (orbax) checkpoints of t5x.examples.t5 networks -> params
    export          `distill export`: any checkpoint -> a Hugging Face folder
"""
