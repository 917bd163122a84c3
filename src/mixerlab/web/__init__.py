"""The research dashboard (`mixerlab serve`) and the static report (`mixerlab report`)."""
