"""What the machine offers: durable file operations and the CPU's capabilities."""
