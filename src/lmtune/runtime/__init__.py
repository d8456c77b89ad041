"""The process layer below tasks/, train/ and evaluate/: process group, memory settings."""
