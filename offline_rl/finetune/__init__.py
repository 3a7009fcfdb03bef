"""Online fine-tuning after the offline phase, one class per option of the ``finetune`` config
group (conf/finetune/): ``none.NoFinetuning`` (``finetune=none``: the run ends after offline RL) and
``online.OnlineFinetuning`` (every other option: the run continues in the dataset's environment,
the option choosing the fine-tuning algorithm -- TD3, TD3+BC, TD3-C or SAC)."""
