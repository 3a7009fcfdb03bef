"""Dataset generation: a behaviour agent trained online (``behaviour``), its rollouts
(``rollouts``) and the D4RL-style levels written as Minari datasets (``datasets``); ``local`` is the
``_target_`` of the ``*-local`` dataset configs. Depends on the algorithms, the data layer and the
training loop; the data layer (``offline_rl.dataset``) never imports it.

    python -m offline_rl.generate --env Hopper-v5 [--levels medium expert ...] [--env-steps N]
"""
