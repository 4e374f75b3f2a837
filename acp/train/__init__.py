"""Stage 3: training and finetuning, resumable to the bit.

- :mod:`acp.train.loop`: ``train`` a classifier (SGD recipe of :class:`acp.settings.Schedule`, checkpoint
  after every epoch, optional distillation), ``evaluate`` its accuracy;
- :mod:`acp.train.detection_loop`: ``train_detector`` -- the same recipe and checkpoint on a torchvision
  detector's own loss, validated by mAP;
- :mod:`acp.train.finetune`: ``finetune_model`` -- materialize a searched architecture from the base
  weights, train it, write a directory ``acp.load_pruned`` loads (detectors through
  :mod:`acp.train.detection_finetune`).

Nothing is imported here, so importing one of them does not import the others.
"""
