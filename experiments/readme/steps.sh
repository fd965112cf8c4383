# Sourced by the README scripts (readme_tour.sh, readme_fit_plan.sh): how a step's command is shown in its transcript.

shown() {  # the command as a user types it: arguments with spaces or shell characters in double quotes
  local line="" arg
  for arg in "$@"; do
    if [[ $arg =~ [[:space:]\'\<\>\|\&\;\(\)\$\*\!] ]]; then line+=" \"$arg\""; else line+=" $arg"; fi
  done
  echo "${line# }"
}
