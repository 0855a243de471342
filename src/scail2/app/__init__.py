"""`scail2 app`: the web app. `workflow` holds every step as a plain, tested function; `ui` lays them out in Gradio."""
