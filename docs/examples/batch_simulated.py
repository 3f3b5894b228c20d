"""Batch jobs in a simulation: the real batch process type against a simulated cluster.

Twenty jobs are submitted, queued, run and end with exit codes drawn from weights, while the
simulation crashes the node now and then. Every job is submitted exactly once.
"""

from processes.batch import BatchJob, SimulatedBatch, parse_hosts
from supervisor import Simulation

hosts = parse_hosts({"cluster": {"address": "login.cluster.example.org", "scheduler": "slurm"}})
cluster = SimulatedBatch(exit_codes={0: 3.0, 1: 1.0}, queue_time=(0.1, 3.0))
sim = Simulation([BatchJob(hosts)], seed=11, executors=cluster.executors, crash_every=10)
pids = [sim.spawn("batch", {"host": "cluster", "argv": ["./simulate", "--seed", str(n)]}) for n in range(20)]
sim.run_until_idle()

print("crashes:", sim.crashes)
print("lifecycles:", sorted(str(sim.lifecycle(pid)) for pid in pids))
print("submitted more than once:", [name for name, count in cluster.submissions.items() if count > 1])
first = sim.state(pids[0])
print("job", first["job_name"], "id", first["job_id"], first["job_state"], "exit code", first["result"]["exit_code"])
