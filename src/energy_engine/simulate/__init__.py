"""A realistic fleet simulator: chargers with meters, vehicles that drive, park and charge."""
