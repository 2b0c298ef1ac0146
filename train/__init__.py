"""ssmc.train: datasets, behaviour policies and collection, the model zoo, the trainer and rollouts."""
