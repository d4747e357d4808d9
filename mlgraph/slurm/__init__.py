"""The Slurm client, job records and figures, shared by the launcher, the dashboard and the alert sensors."""
