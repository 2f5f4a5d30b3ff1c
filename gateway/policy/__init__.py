"""What is allowed: the Casbin engine, the policy tools, break-glass, IdP role changes."""
