"""Image optimisation as (parametrisation, objective, transforms, step rule) -> images, after Lucent."""
