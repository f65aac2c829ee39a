"""Training: the loop, its settings, optimisers, schedules, evaluation and MPI.

    config        `TrainConfig` (every setting, commented) and `DEFAULT_PATTERN`
    loop          `train(config)`: the training loop, exact resume, the run's files
    optim         SGD, momentum, Nesterov, Adam
    schedules     learning-rate schedules
    evaluate      accuracy, loss, per-class accuracy and the confusion matrix
    distributed   data-parallel training and evaluation under `mpiexec -n R`
    watchdog      the MPI watchdog: a collective that hangs names the silent ranks, ends the job
"""
