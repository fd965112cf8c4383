"""Stage: jobs. Run many tasks inline, as local processes, or on Slurm, and resume after a crash.

In: tasks (a callable and its arguments) and where to run them (:class:`~.dispatch.DispatchOptions`).
Out: a study folder of job records that a rerun reads to skip finished work (:mod:`.dispatch`); Slurm
resources and time limits (:mod:`.slurm`). Used by ``train sweep`` and ``bench``; knows nothing of either.
"""
