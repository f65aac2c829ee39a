"""Training: the loop, its settings, optimisers, schedules, evaluation and MPI.

    config        `TrainConfig` (every setting, commented), `DEFAULT_PATTERN`, `check_settings`
    loop          `train(config)`: the training loop, exact resume, the run's files; `run`, the
                  same loop on data in memory
    fitting       `fit(net, x, y, ...)` (`slidenet.fit`): arrays in memory through `loop.run`
    optim         SGD, momentum, Nesterov, Adam
    schedules     learning-rate schedules
    evaluate      accuracy, loss, per-class accuracy and the confusion matrix
    distributed   data-parallel training and evaluation under `mpiexec -n R`
    watchdog      the MPI watchdog: a collective that hangs names the silent ranks, ends the job
"""
