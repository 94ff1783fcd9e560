"""Run records (what every command did, replayable on another backbone) and scale curves."""
