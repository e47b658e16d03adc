"""The closed-loop demo: what `hearth run` does after the first champion, minus Prefect.

`flows/main_job.py` runs it as one Prefect flow: the pipeline, then

1. **Drift** (`drifted_period`). A later period with the ``fraud-pattern`` drift (a fraud
   wave of fast takeovers and card testing on the victims' own devices): its first days land
   in ``data/raw`` like any daily drop, the days after them are kept aside under
   ``HEARTH_HOME/live/`` — they have not "happened" yet when the challenger is trained, and
   are replayed later as live traffic. Same customers, later dates: a rerun regenerates
   byte-identical files.
2. **Challenger.** The pipeline again, on all the data (raw gate, ETL, feature gate,
   training, registration gate). If the gate does not make the new version the challenger,
   the summary says why and the job goes on with the drill.
3. **Canary** (`live_traffic`). `hearth serve --topology monolith` as a child process on a
   free loopback port; the live period is replayed through it (delayed labels via
   /feedback) while the rollout flow runs its canary steps, analysed with params.yaml's
   ``rollout.profiles.demo``, and lets the analysis promote — or not.
4. **Drill.** A model trained on shuffled labels (experiments/broken-shuffled.yaml) is
   registered — the gate rejects it as challenger — and then put into a rollout *on purpose*
   with its explicit version (a rollout started by version bypasses the registration gate;
   that is the point of a drill), to show the automatic rollback.

The server is stopped at the end and on any failure. `closed_loop` holds the plan and the
typed results, `summary_lines` what `hearth run` prints of them.
"""
