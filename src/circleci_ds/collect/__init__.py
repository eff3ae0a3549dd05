"""Collection: the walk over each endpoint's pipelines, the incremental rules, lanes and phases."""
