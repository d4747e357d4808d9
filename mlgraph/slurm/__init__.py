"""The Slurm client and job records, shared by the launcher, the resource and the dashboard."""
