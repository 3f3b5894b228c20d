"""Cloud pods in a simulation: the real cloud process type against a simulated cluster.

Thirty steps of a workflow each run as a pod: scheduled, run, ended with exit codes drawn from
weights (137 is an OOM kill), while the simulation crashes the node now and then. No action ever
makes two pods.
"""

from processes.cloud import CloudPod, SimulatedCloud, parse_clusters
from supervisor import Simulation

clusters = parse_clusters({"gke": {"kubeconfig": "~/.kube/config", "context": "prod", "namespace": "batch"}})
cluster = SimulatedCloud(exit_codes={0: 8.0, 1: 1.0, 137: 1.0}, schedule_time=(0.1, 2.0))
sim = Simulation([CloudPod(clusters, "logs")], seed=3, executors=cluster.executors, crash_every=10)
settings = {"cluster": "gke", "image": "ghcr.io/example/step:1.4", "resources": {"limits": {"memory": "2Gi"}}}
pids = [sim.spawn("cloud", {**settings, "args": ["--step", str(n)]}) for n in range(30)]
sim.run_until_idle()

print("crashes:", sim.crashes)
print("lifecycles:", sorted(str(sim.lifecycle(pid)) for pid in pids))
print("pods created more than once:", [name for name, count in cluster.creates.items() if count > 1])
first = sim.state(pids[0])
print("pod", first["pod"], "in", first["namespace"], "ended:", first["result"]["reason"])
