"""Two source roots (the rest of the metadata is in setup.cfg): platform/ holds the fieldsync
package, admin/ the admin UI's fieldsync_admin package. setup.cfg's `packages.find` takes one
`where`, so the packages of both are listed here."""

from setuptools import find_packages, setup

setup(packages=find_packages("platform") + find_packages("admin"))
