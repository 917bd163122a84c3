"""The research loop (`mixerlab discover`), as stages a candidate passes through in order (stages.py):

1. **propose**: select a parent (propose/select.py), ask the proposer for a named change with its Insights
   document, record it;
2. **check and repair**: check the code in the sandbox, repairing up to `max_repairs` times with the exact report;
3. **inert**: a candidate that behaves exactly as an earlier experiment is recorded as such and not trained;
4. **evaluate**: train it on the run's profile (sandboxed; every finished training goes to the result cache at once);
5. **judge and promote**: judge it against its parent, the baselines and its own targets, counting the profile's
   measured noise (judge.py); train a real improvement on the promotion profile;
6. **record**: write the result, keep the best so far, print the iteration block in the seeds' shape.

A `Candidate` (candidate.py) carries a proposal from stage to stage. `Pipeline` (pipeline.py) runs them: proposal
threads do stages 1-3 and put checked candidates on a queue; `--workers` evaluation threads do 4-6. At most
`workers + proposals_ahead` candidates are proposed and not yet finished: with a slow language model a proposal is
made while the GPUs train, and with the instant catalog proposer every proposal waits for, and learns from, every
result before it. `ResearchLoop` (run.py) opens or resumes the run, evaluates the baselines and feeds the pipeline.

Durability: every state change is one committed row update, so a kill at any moment (kill -9 included) leaves each
experiment either finished or visibly unfinished (proposed / checking / evaluating). `--resume` re-checks or
re-evaluates the unfinished ones (finished trainings come from the cache) and continues the iteration count from
the database, so nothing is lost or done twice.
"""

from .candidate import Best, Candidate, NoCandidate
from .output import view
from .pipeline import Next, Pipeline
from .run import BASELINES, ResearchLoop, RunExists, RunFailed
from .stages import LoopState

__all__ = ["BASELINES", "Best", "Candidate", "LoopState", "Next", "NoCandidate", "Pipeline", "ResearchLoop",
           "RunExists", "RunFailed", "view"]
